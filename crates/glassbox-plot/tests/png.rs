//! SVG to PNG: a real picture of the right size comes out; bad SVG is an error.

#[test]
fn an_svg_becomes_a_png_of_its_size_times_the_scale() {
    let svg = r##"<svg width="120" height="40" viewBox="0 0 120 40"><rect x="0" y="0" width="60" height="40" fill="#e67e22"/><text x="70" y="25">hi</text></svg>"##;
    let png = glassbox_plot::png_from_svg(svg, 2.0).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    // IHDR: width and height, big-endian, right after the chunk header
    let w = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((w, h), (240, 80));
}

#[test]
fn invalid_svg_is_an_error() {
    assert!(glassbox_plot::png_from_svg("<svg", 1.0)
        .unwrap_err()
        .contains("not a valid SVG"));
}
