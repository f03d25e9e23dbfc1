//! Weights in the precision they were stored in (f32, bf16, f16, GGUF quant blocks),
//! expanded to f32 only when a layer is about to run. A 1B-parameter bf16 checkpoint
//! then needs its own size in memory plus one layer in f32, not twice its size.
//! Compute always stays f32: expansion is exact (bf16/f16 → f32 loses nothing, and a
//! quantized block dequantizes to the same values every time).

use crate::error::{ModelError, Result};
use candle_core::quantized::QTensor;
use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use rayon::prelude::*;
use std::io::{Read, Seek, SeekFrom};
use std::mem::MaybeUninit;
use std::path::Path;
use std::sync::Arc;

/// One weight matrix as stored.
#[derive(Debug, Clone)]
pub enum StoredTensor {
    /// f32, bf16 or f16
    Dense(Tensor),
    /// GGUF quant blocks; `unpermute_heads` undoes llama.cpp's Q/K row interleave
    Quantized {
        /// the quant blocks, as read from the file
        tensor: Arc<QTensor>,
        /// the head count, when the rows must be un-interleaved after dequantizing
        /// (llama Q and K); `None`: rows as stored
        unpermute_heads: Option<usize>,
    },
}

impl StoredTensor {
    /// The shape (`[out, in]` for a linear map).
    pub fn dims(&self) -> Vec<usize> {
        match self {
            StoredTensor::Dense(t) => t.dims().to_vec(),
            StoredTensor::Quantized { tensor, .. } => tensor.shape().dims().to_vec(),
        }
    }

    /// Whether it is already a dense f32 tensor (nothing to expand).
    pub fn is_f32(&self) -> bool {
        matches!(self, StoredTensor::Dense(t) if t.dtype() == DType::F32)
    }

    /// Bytes held in memory as stored.
    pub fn stored_bytes(&self) -> usize {
        match self {
            StoredTensor::Dense(t) => t.elem_count() * t.dtype().size_in_bytes(),
            StoredTensor::Quantized { tensor, .. } => tensor.storage_size_in_bytes(),
        }
    }

    /// Bytes once expanded to f32.
    pub fn expanded_bytes(&self) -> usize {
        self.dims().iter().product::<usize>() * 4
    }

    /// The tensor of a dense weight (HF checkpoints are always dense).
    pub fn dense(&self) -> Result<&Tensor> {
        match self {
            StoredTensor::Dense(t) => Ok(t),
            StoredTensor::Quantized { .. } => Err(ModelError::BadInput(
                "internal: a quantized tensor where a dense one was expected".into(),
            )),
        }
    }

    /// Whether two stored tensors hold exactly the same values.
    pub fn same_values(&self, other: &StoredTensor) -> Result<bool> {
        if self.dims() != other.dims() {
            return Ok(false);
        }
        let (a, b) = match (self, other) {
            (StoredTensor::Dense(a), StoredTensor::Dense(b)) if a.dtype() == b.dtype() => {
                (a.clone(), b.clone())
            }
            _ => (self.expand()?, other.expand()?),
        };
        let equal = a
            .eq(&b)?
            .to_dtype(DType::F32)?
            .min_all()?
            .to_scalar::<f32>()?;
        Ok(equal == 1.0)
    }

    /// The f32 values (a cheap clone when already f32).
    pub fn expand(&self) -> Result<Tensor> {
        match self {
            StoredTensor::Dense(t) if t.dtype() == DType::F32 => Ok(t.clone()),
            StoredTensor::Dense(_) => expand_stacked(&[self]),
            StoredTensor::Quantized {
                tensor,
                unpermute_heads,
            } => {
                let t = tensor.dequantize(&Device::Cpu)?;
                match unpermute_heads {
                    Some(h) => crate::gguf::unpermute_rotary(t, *h),
                    None => Ok(t),
                }
            }
        }
    }

    /// Rows `start..start+len` in f32 (the unembedding, a slice of the vocabulary at a time).
    pub fn expand_rows(&self, start: usize, len: usize) -> Result<Tensor> {
        match self {
            StoredTensor::Dense(t) => {
                expand_stacked(&[&StoredTensor::Dense(t.narrow(0, start, len)?)])
            }
            StoredTensor::Quantized { .. } => Ok(self.expand()?.narrow(0, start, len)?),
        }
    }
}

/// bf16/f16 → f32 on every core (candle's conversion runs on one); f32 passes through.
pub fn to_f32(t: &Tensor) -> Result<Tensor> {
    match t.dtype() {
        DType::F32 => Ok(t.clone()),
        DType::BF16 | DType::F16 => expand_stacked(&[&StoredTensor::Dense(t.clone())]),
        _ => Ok(t.to_dtype(DType::F32)?),
    }
}

const CHUNK: usize = 1 << 15;

/// Widens `src` into `dst` on every core.
/// `dst` may be uninitialised: every element is written, none read.
fn widen<T: Copy + Sync>(src: &[T], dst: &mut [MaybeUninit<f32>], f: impl Fn(T) -> f32 + Sync) {
    assert_eq!(src.len(), dst.len(), "expand: element count");
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| {
            for (d, &s) in d.iter_mut().zip(s) {
                d.write(f(s));
            }
        });
}

fn write_all(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "expand: element count");
    for (d, &s) in dst.iter_mut().zip(src) {
        d.write(s);
    }
}

/// Expands `parts` (`[rows_i, ...]`, equal trailing dims) into one f32 tensor stacked
/// along rows, in a single pass straight from their storage: no intermediate copies,
/// and the fresh buffer is backed by huge pages (a 1B model expands ~4 GB per pass,
/// where 4 KiB page faults alone cost seconds).
pub fn expand_stacked(parts: &[&StoredTensor]) -> Result<Tensor> {
    let first = parts
        .first()
        .ok_or_else(|| ModelError::BadInput("internal: nothing to expand".into()))?
        .dims();
    let tail = &first[1..];
    let mut rows = 0;
    for p in parts {
        let d = p.dims();
        if &d[1..] != tail {
            return Err(ModelError::BadInput(format!(
                "internal: cannot stack {d:?} under {first:?}"
            )));
        }
        rows += d[0];
    }
    let width: usize = tail.iter().product();
    let total = rows * width;
    // Not zero-filled first: that pass alone costs a tenth of a 1B forward.
    let mut out: Vec<f32> = Vec::with_capacity(total);
    crate::kernels::advise_huge_pages(&mut out);
    let mut offset = 0;
    for p in parts {
        let n = p.dims().iter().product::<usize>();
        let dst = &mut out.spare_capacity_mut()[offset..offset + n];
        match p {
            StoredTensor::Dense(t) => {
                let t = t.contiguous()?;
                let (storage, layout) = t.storage_and_layout();
                let start = layout.start_offset();
                match &*storage {
                    Storage::Cpu(CpuStorage::BF16(v)) => {
                        // bf16 is the top half of an f32: the widening is a shift
                        widen(&v[start..start + n], dst, |x: half::bf16| {
                            f32::from_bits((x.to_bits() as u32) << 16)
                        })
                    }
                    Storage::Cpu(CpuStorage::F16(v)) => {
                        widen(&v[start..start + n], dst, |x: half::f16| x.to_f32())
                    }
                    Storage::Cpu(CpuStorage::F32(v)) => widen(&v[start..start + n], dst, |x| x),
                    _ => {
                        drop(storage);
                        let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                        write_all(dst, &v);
                    }
                }
            }
            StoredTensor::Quantized { .. } => {
                let v = p.expand()?.flatten_all()?.to_vec1::<f32>()?;
                write_all(dst, &v);
            }
        }
        offset += n;
    }
    // SAFETY: the parts' sizes sum to `total` (their rows were counted above with the
    // shared trailing dims), and each wrote its whole `offset..offset + n` range.
    unsafe { out.set_len(total) };
    let mut shape = vec![rows];
    shape.extend_from_slice(tail);
    Ok(Tensor::from_vec(out, shape, &Device::Cpu)?)
}

/// One tensor of a safetensors file, read on its own (never the whole file at once).
pub struct SafetensorsFile {
    file: std::fs::File,
    data_start: u64,
    /// every tensor the header lists (not `__metadata__`), in the header's order
    pub entries: Vec<(String, Entry)>,
}

/// One tensor of a safetensors header, checked against the file.
#[derive(Debug, Clone)]
pub struct Entry {
    /// the stored dtype (F64 is read as f32)
    pub dtype: DType,
    /// the shape
    pub shape: Vec<usize>,
    /// first byte, counted from the start of the data section (after the header)
    pub start: u64,
    /// one past the last byte, counted like `start`
    pub end: u64,
}

/// The header's size field is a u64 an attacker controls: headers beyond this are refused.
const MAX_HEADER_BYTES: u64 = 100 << 20;

impl SafetensorsFile {
    /// Reads and checks the header: every tensor's byte range lies inside the file and
    /// matches its dtype × shape.
    pub fn open(path: &Path) -> Result<Self> {
        let bad = |m: String| ModelError::bad_file(path, m);
        let mut file = std::fs::File::open(path).map_err(|e| ModelError::bad_file(path, e))?;
        let file_len = file
            .metadata()
            .map_err(|e| ModelError::bad_file(path, e))?
            .len();
        let mut len = [0u8; 8];
        file.read_exact(&mut len)
            .map_err(|_| bad("not a valid safetensors file (shorter than its header)".into()))?;
        let n = u64::from_le_bytes(len);
        if n > MAX_HEADER_BYTES || 8 + n > file_len {
            return Err(bad(format!(
                "not a valid safetensors file: header of {n} bytes in a {file_len}-byte file (truncated or corrupt?)"
            )));
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact(&mut header)
            .map_err(|e| bad(format!("cannot read the safetensors header: {e}")))?;
        let json: serde_json::Value = serde_json::from_slice(&header)
            .map_err(|e| bad(format!("safetensors header is not JSON: {e}")))?;
        let obj = json
            .as_object()
            .ok_or_else(|| bad("safetensors header is not a JSON object".into()))?;
        let data_start = 8 + n;
        let data_len = file_len - data_start;
        let mut entries = Vec::with_capacity(obj.len());
        for (name, info) in obj {
            if name == "__metadata__" {
                continue;
            }
            let dtype_name = info.get("dtype").and_then(|d| d.as_str()).unwrap_or("");
            let dtype = match dtype_name {
                "F32" => DType::F32,
                "BF16" => DType::BF16,
                "F16" => DType::F16,
                "F64" => DType::F64,
                "I64" => DType::I64,
                "U32" => DType::U32,
                "U8" => DType::U8,
                other => {
                    return Err(bad(format!(
                        "tensor `{name}` has dtype `{other}`, which glassbox does not read (F32, BF16, F16, F64, I64, U32, U8)"
                    )))
                }
            };
            let shape: Vec<usize> = info
                .get("shape")
                .and_then(|s| s.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_u64())
                        .map(|v| v as usize)
                        .collect()
                })
                .ok_or_else(|| bad(format!("tensor `{name}` has no shape")))?;
            let offsets: Vec<u64> = info
                .get("data_offsets")
                .and_then(|s| s.as_array())
                .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
                .unwrap_or_default();
            let [start, end] = offsets[..] else {
                return Err(bad(format!(
                    "tensor `{name}` has no data_offsets [start, end]"
                )));
            };
            let numel = shape
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
            let want = numel.and_then(|n| n.checked_mul(dtype.size_in_bytes() as u64));
            if end < start || end > data_len || Some(end - start) != want {
                if end > data_len {
                    return Err(bad(format!(
                        "not a valid safetensors file: tensor `{name}` ends at byte {end} of a {data_len}-byte data section (truncated?)"
                    )));
                }
                return Err(bad(format!(
                    "tensor `{name}`: the header says {dtype_name} {shape:?} ({} bytes) but its data range holds {} bytes; the file is corrupt or its header names the wrong dtype",
                    want.map_or("overflowing".to_string(), |w| w.to_string()),
                    end.saturating_sub(start),
                )));
            }
            entries.push((
                name.clone(),
                Entry {
                    dtype,
                    shape,
                    start,
                    end,
                },
            ));
        }
        Ok(SafetensorsFile {
            file,
            data_start,
            entries,
        })
    }

    /// Reads one tensor; floats other than f32/bf16/f16 become f32.
    pub fn read(&mut self, e: &Entry) -> std::io::Result<Tensor> {
        let mut bytes = vec![0u8; (e.end - e.start) as usize];
        self.file.seek(SeekFrom::Start(self.data_start + e.start))?;
        self.file.read_exact(&mut bytes)?;
        let t = Tensor::from_raw_buffer(&bytes, e.dtype, &e.shape, &Device::Cpu)
            .map_err(std::io::Error::other)?;
        Ok(if e.dtype == DType::F64 {
            t.to_dtype(DType::F32).map_err(std::io::Error::other)?
        } else {
            t
        })
    }
}
