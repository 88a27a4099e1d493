//! Reader (and writer, for tests and tools) of the CTranslate2 `model.bin` format, binary
//! version 6: little-endian `u32` version, `u16`-length spec name, `u32` revision, `u32` variable
//! count, then per variable a `u16`-length NUL-terminated name, `u8` rank, `u32` dims, `u8` dtype,
//! `u32` byte count and the raw bytes; then a `u32` alias count and alias → name pairs.
//!
//! Every length is checked against what is left of the file, so a truncated or corrupted file
//! gives a [`Ct2Error`] naming the problem and where it is, never a panic or a huge allocation.

use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum Ct2Error {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "truncated CTranslate2 model: {what} at byte {offset} needs {needed} bytes, {left} left"
    )]
    Truncated {
        what: String,
        offset: usize,
        needed: usize,
        left: usize,
    },
    #[error("unsupported CTranslate2 binary version {0} (expected 6)")]
    Version(u32),
    #[error("corrupted CTranslate2 model: {0}")]
    Corrupt(String),
    #[error("{} trailing bytes after the last CTranslate2 record (corrupted file?)", .0)]
    Trailing(usize),
}

/// Element type of a variable, with CTranslate2's codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ct2DType {
    F32,
    I8,
    I16,
    I32,
    F16,
    Bf16,
}

impl Ct2DType {
    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Ct2DType::F32,
            1 => Ct2DType::I8,
            2 => Ct2DType::I16,
            3 => Ct2DType::I32,
            4 => Ct2DType::F16,
            5 => Ct2DType::Bf16,
            _ => return None,
        })
    }

    fn code(self) -> u8 {
        match self {
            Ct2DType::F32 => 0,
            Ct2DType::I8 => 1,
            Ct2DType::I16 => 2,
            Ct2DType::I32 => 3,
            Ct2DType::F16 => 4,
            Ct2DType::Bf16 => 5,
        }
    }

    pub fn size(self) -> usize {
        match self {
            Ct2DType::I8 => 1,
            Ct2DType::I16 | Ct2DType::F16 | Ct2DType::Bf16 => 2,
            Ct2DType::F32 | Ct2DType::I32 => 4,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Ct2Var {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: Ct2DType,
    pub data: Vec<u8>,
}

impl Ct2Var {
    /// The value of a scalar integer variable (such as `encoder/num_heads`).
    pub fn scalar_int(&self) -> Option<i64> {
        if !self.shape.is_empty() {
            return None;
        }
        let d = &self.data;
        Some(match self.dtype {
            Ct2DType::I8 => d[0] as i8 as i64,
            Ct2DType::I16 => i16::from_le_bytes([d[0], d[1]]) as i64,
            Ct2DType::I32 => i32::from_le_bytes([d[0], d[1], d[2], d[3]]) as i64,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Ct2Model {
    pub spec: String,
    pub revision: u32,
    pub vars: Vec<Ct2Var>,
    /// alias → target name.
    pub aliases: Vec<(String, String)>,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8], Ct2Error> {
        let left = self.buf.len() - self.pos;
        if n > left {
            return Err(Ct2Error::Truncated {
                what: what(),
                offset: self.pos,
                needed: n,
                left,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self, what: &dyn Fn() -> String) -> Result<u8, Ct2Error> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &dyn Fn() -> String) -> Result<u16, Ct2Error> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, Ct2Error> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, Ct2Error> {
        let n = self.u16(what)? as usize;
        let b = self.take(n, what)?;
        let b = b.strip_suffix(&[0]).unwrap_or(b);
        String::from_utf8(b.to_vec())
            .map_err(|_| Ct2Error::Corrupt(format!("{} is not UTF-8", what())))
    }
}

impl Ct2Model {
    pub fn read(path: &Path) -> Result<Ct2Model, Ct2Error> {
        let bytes = std::fs::read(path).map_err(|source| Ct2Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        Ct2Model::parse(&bytes)
    }

    pub fn parse(buf: &[u8]) -> Result<Ct2Model, Ct2Error> {
        let mut r = Reader { buf, pos: 0 };
        let version = r.u32(&|| "binary version".into())?;
        if version != 6 {
            return Err(Ct2Error::Version(version));
        }
        let spec = r.string(&|| "spec name".into())?;
        let revision = r.u32(&|| "spec revision".into())?;
        let count = r.u32(&|| "variable count".into())? as usize;
        let mut vars = Vec::with_capacity(count.min(4096));
        for i in 0..count {
            let name = r.string(&|| format!("name of variable {i}"))?;
            let w = || format!("variable `{name}`");
            let rank = r.u8(&w)? as usize;
            let mut shape = Vec::with_capacity(rank);
            for _ in 0..rank {
                shape.push(r.u32(&w)? as usize);
            }
            let code = r.u8(&w)?;
            let dtype = Ct2DType::from_code(code)
                .ok_or_else(|| Ct2Error::Corrupt(format!("{}: unknown dtype code {code}", w())))?;
            let nbytes = r.u32(&w)? as usize;
            let expected = shape
                .iter()
                .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| Ct2Error::Corrupt(format!("{}: shape overflows", w())))?;
            if nbytes != expected {
                return Err(Ct2Error::Corrupt(format!(
                    "{}: {nbytes} bytes for shape {shape:?} of {dtype:?} (expected {expected})",
                    w()
                )));
            }
            let data = r.take(nbytes, &w)?.to_vec();
            vars.push(Ct2Var {
                name,
                shape,
                dtype,
                data,
            });
        }
        let n_alias = r.u32(&|| "alias count".into())? as usize;
        let mut aliases = Vec::with_capacity(n_alias.min(4096));
        for i in 0..n_alias {
            let alias = r.string(&|| format!("alias {i}"))?;
            let target = r.string(&|| format!("target of alias `{alias}`"))?;
            aliases.push((alias, target));
        }
        if r.pos != buf.len() {
            return Err(Ct2Error::Trailing(buf.len() - r.pos));
        }
        Ok(Ct2Model {
            spec,
            revision,
            vars,
            aliases,
        })
    }

    /// Serializes the model back into the binary format (used to make test fixtures).
    pub fn to_bytes(&self) -> Vec<u8> {
        fn string(out: &mut Vec<u8>, s: &str) {
            out.extend_from_slice(&((s.len() + 1) as u16).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        }
        let mut out = Vec::new();
        out.extend_from_slice(&6u32.to_le_bytes());
        string(&mut out, &self.spec);
        out.extend_from_slice(&self.revision.to_le_bytes());
        out.extend_from_slice(&(self.vars.len() as u32).to_le_bytes());
        for v in &self.vars {
            string(&mut out, &v.name);
            out.push(v.shape.len() as u8);
            for d in &v.shape {
                out.extend_from_slice(&(*d as u32).to_le_bytes());
            }
            out.push(v.dtype.code());
            out.extend_from_slice(&(v.data.len() as u32).to_le_bytes());
            out.extend_from_slice(&v.data);
        }
        out.extend_from_slice(&(self.aliases.len() as u32).to_le_bytes());
        for (a, t) in &self.aliases {
            string(&mut out, a);
            string(&mut out, t);
        }
        out
    }

    /// Variables by name, aliases resolved.
    pub fn index(&self) -> HashMap<&str, &Ct2Var> {
        let mut map: HashMap<&str, &Ct2Var> =
            self.vars.iter().map(|v| (v.name.as_str(), v)).collect();
        for (alias, target) in &self.aliases {
            if let Some(v) = map.get(target.as_str()).copied() {
                map.entry(alias.as_str()).or_insert(v);
            }
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Ct2Model {
        Ct2Model {
            spec: "WhisperSpec".into(),
            revision: 3,
            vars: vec![
                Ct2Var {
                    name: "a/b".into(),
                    shape: vec![2, 2],
                    dtype: Ct2DType::F16,
                    data: vec![0; 8],
                },
                Ct2Var {
                    name: "n".into(),
                    shape: vec![],
                    dtype: Ct2DType::I16,
                    data: 6i16.to_le_bytes().to_vec(),
                },
            ],
            aliases: vec![("c".into(), "a/b".into())],
        }
    }

    #[test]
    fn round_trip_and_aliases() {
        let bytes = tiny().to_bytes();
        let m = Ct2Model::parse(&bytes).unwrap();
        assert_eq!(m.spec, "WhisperSpec");
        assert_eq!(m.vars.len(), 2);
        assert_eq!(m.index()["c"].shape, vec![2, 2]);
        assert_eq!(m.index()["n"].scalar_int(), Some(6));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = tiny().to_bytes();
        for len in 0..bytes.len() {
            assert!(Ct2Model::parse(&bytes[..len]).is_err(), "length {len}");
        }
        let mut longer = bytes.clone();
        longer.push(1);
        assert!(matches!(
            Ct2Model::parse(&longer),
            Err(Ct2Error::Trailing(1))
        ));
    }

    #[test]
    fn bad_byte_count_is_corrupt() {
        let mut m = tiny();
        m.vars[0].data.pop();
        let err = Ct2Model::parse(&m.to_bytes()).unwrap_err().to_string();
        assert!(err.contains("a/b"), "{err}");
    }
}
