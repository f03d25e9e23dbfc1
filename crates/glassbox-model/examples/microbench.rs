use candle_core::{Device, Tensor, D};
use std::time::Instant;
fn time<F: FnMut() -> Tensor>(name: &str, mut f: F) {
    f();
    let n = 5;
    let t = Instant::now();
    for _ in 0..n {
        let _ = f();
    }
    println!(
        "{name:40} {:8.2} ms",
        t.elapsed().as_secs_f64() * 1000.0 / n as f64
    );
}
fn main() {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (2048, 576), &dev).unwrap();
    let w_out_in = Tensor::randn(0f32, 1.0, (1536, 576), &dev).unwrap();
    let w_in_out = w_out_in.t().unwrap().contiguous().unwrap();
    let w_dn = Tensor::randn(0f32, 1.0, (576, 1536), &dev).unwrap();
    let h = Tensor::randn(0f32, 1.0, (2048, 1536), &dev).unwrap();
    time("up [2048,576]x[576,1536] (w.t())", || {
        x.matmul(&w_out_in.t().unwrap()).unwrap()
    });
    time("up [2048,576]x[576,1536] (contig)", || {
        x.matmul(&w_in_out).unwrap()
    });
    time("down [2048,1536]x[1536,576] (w.t())", || {
        h.matmul(&w_dn.t().unwrap()).unwrap()
    });
    let q = Tensor::randn(0f32, 1.0, (8, 3, 768, 64), &dev).unwrap();
    let k = Tensor::randn(0f32, 1.0, (8, 3, 256, 64), &dev).unwrap();
    time("scores q k^T batched", || {
        q.matmul(&k.t().unwrap()).unwrap()
    });
    let s = Tensor::randn(0f32, 1.0, (8, 9, 256, 256), &dev).unwrap();
    let mask = Tensor::zeros((8, 1, 256, 256), candle_core::DType::F32, &dev).unwrap();
    time("scale", || (&s * 0.125).unwrap());
    time("mask add", || s.broadcast_add(&mask).unwrap());
    time("softmax", || candle_nn::ops::softmax_last_dim(&s).unwrap());
    let p = s.reshape((8, 3, 768, 256)).unwrap();
    let v = Tensor::randn(0f32, 1.0, (8, 3, 256, 64), &dev).unwrap();
    time("pattern v", || p.matmul(&v).unwrap());
    let xs = x.reshape((8, 256, 576)).unwrap();
    let wn = Tensor::ones(576, candle_core::DType::F32, &dev).unwrap();
    time("rms_norm", || {
        candle_nn::ops::rms_norm(&xs, &wn, 1e-5).unwrap()
    });
    time("silu*up", || (h.silu().unwrap() * &h).unwrap());
    let q4 = Tensor::randn(0f32, 1.0, (8, 256, 9, 64), &dev).unwrap();
    time("transpose contiguous q", || {
        q4.transpose(1, 2).unwrap().contiguous().unwrap()
    });
    time("resid add", || (&xs + &xs).unwrap());
    let cos = Tensor::randn(0f32, 1.0, (8, 256, 1, 64), &dev).unwrap();
    time("rope", || {
        let x1 = q4.narrow(3, 0, 32).unwrap();
        let x2 = q4.narrow(3, 32, 32).unwrap();
        let r = Tensor::cat(&[&x2.neg().unwrap(), &x1], 3).unwrap();
        (q4.broadcast_mul(&cos).unwrap() + r.broadcast_mul(&cos).unwrap()).unwrap()
    });
    let e = Tensor::randn(0f32, 1.0, (49152, 576), &dev).unwrap();
    time("unembed x e^T", || x.matmul(&e.t().unwrap()).unwrap());
    let _ = D::Minus1;
}
