//! A minimal reader of ONNX model files: just enough of `ModelProto` to take the weights and the
//! graph structure out of an exported network (the Piper voice, Silero VAD, Smart Turn), without
//! an ONNX runtime.
//!
//! ONNX files are protocol buffers. This module decodes the wire format by hand (varints and
//! length-delimited fields) and keeps only what an importer needs: the graph's initializers
//! (`TensorProto`: name, dims, data type and data), its nodes (`NodeProto`: name, op type, inputs,
//! outputs, scalar and list attributes) and the names of the graph's inputs and outputs. Everything
//! else is skipped. Tensor data is borrowed from the file's bytes, not copied.
//!
//! Every read is bounds-checked: a truncated or corrupted file gives an [`OnnxError`] that names the
//! byte offset and the field being read, never a panic.

use std::fmt;

/// Why a file could not be read as an ONNX model.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OnnxError {
    /// The data ends inside a field.
    #[error("ONNX: truncated at byte {offset} while reading {field} (needs {needed} more bytes, {available} left)")]
    Truncated {
        offset: usize,
        field: String,
        needed: u64,
        available: usize,
    },
    /// A varint longer than 10 bytes.
    #[error("ONNX: malformed varint at byte {offset} in {field}")]
    BadVarint { offset: usize, field: String },
    /// A wire type that is invalid, or not the one the field must have.
    #[error("ONNX: unexpected wire type {wire_type} for field {field_number} at byte {offset} in {field}")]
    WireType {
        offset: usize,
        field: String,
        field_number: u64,
        wire_type: u8,
    },
    /// A string field that is not UTF-8.
    #[error("ONNX: {field} at byte {offset} is not UTF-8")]
    Utf8 { offset: usize, field: String },
    /// The model has no graph (field 7).
    #[error("ONNX: the model has no graph (ModelProto field 7)")]
    NoGraph,
    /// A tensor whose data cannot be converted (size does not match the dims, unknown type, data
    /// kept in an external file ...).
    #[error("ONNX: tensor `{name}`: {reason}")]
    Tensor { name: String, reason: String },
}

type Result<T> = std::result::Result<T, OnnxError>;

/// ONNX `TensorProto.DataType` values this reader converts.
pub mod data_type {
    pub const FLOAT: i32 = 1;
    pub const UINT8: i32 = 2;
    pub const INT8: i32 = 3;
    pub const INT32: i32 = 6;
    pub const INT64: i32 = 7;
    pub const BOOL: i32 = 9;
    pub const FLOAT16: i32 = 10;
    pub const DOUBLE: i32 = 11;
    pub const BFLOAT16: i32 = 16;
}

/// The parts of `ModelProto` the importer uses.
#[derive(Debug, Clone)]
pub struct Model<'a> {
    pub ir_version: i64,
    pub producer_name: String,
    pub producer_version: String,
    pub graph: Graph<'a>,
}

/// The parts of `GraphProto` the importer uses.
#[derive(Debug, Clone, Default)]
pub struct Graph<'a> {
    pub name: String,
    pub nodes: Vec<Node<'a>>,
    pub initializers: Vec<Tensor<'a>>,
    /// Names of the graph inputs (`ValueInfoProto.name`).
    pub inputs: Vec<String>,
    /// Names of the graph outputs.
    pub outputs: Vec<String>,
}

/// One operator of the graph.
#[derive(Debug, Clone, Default)]
pub struct Node<'a> {
    pub name: String,
    pub op_type: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attributes: Vec<Attribute<'a>>,
}

impl<'a> Node<'a> {
    pub fn attribute(&self, name: &str) -> Option<&AttributeValue<'a>> {
        self.attributes
            .iter()
            .find(|a| a.name == name)
            .map(|a| &a.value)
    }

    /// An integer list attribute (`ints`), e.g. `strides` or `dilations` of a convolution.
    pub fn ints(&self, name: &str) -> Option<&[i64]> {
        match self.attribute(name) {
            Some(AttributeValue::Ints(v)) => Some(v),
            _ => None,
        }
    }

    /// An integer attribute (`i`), e.g. `group` of a convolution.
    pub fn int(&self, name: &str) -> Option<i64> {
        match self.attribute(name) {
            Some(AttributeValue::Int(v)) => Some(*v),
            _ => None,
        }
    }

    /// A tensor attribute (`t`), e.g. the `value` of a `Constant` node.
    pub fn tensor(&self, name: &str) -> Option<&Tensor<'a>> {
        match self.attribute(name) {
            Some(AttributeValue::Tensor(t)) => Some(t),
            _ => None,
        }
    }

    /// A graph attribute (`g`), e.g. the `then_branch` of an `If` node.
    pub fn graph(&self, name: &str) -> Option<&Graph<'a>> {
        match self.attribute(name) {
            Some(AttributeValue::Graph(g)) => Some(g),
            _ => None,
        }
    }
}

/// A node attribute (`AttributeProto`).
#[derive(Debug, Clone)]
pub struct Attribute<'a> {
    pub name: String,
    pub value: AttributeValue<'a>,
}

#[derive(Debug, Clone)]
pub enum AttributeValue<'a> {
    Float(f32),
    Int(i64),
    Bytes(Vec<u8>),
    Floats(Vec<f32>),
    Ints(Vec<i64>),
    /// A constant tensor (`t`), as `Constant` nodes carry their value.
    Tensor(Box<Tensor<'a>>),
    /// A subgraph (`g`), as the branches of `If` nodes.
    Graph(Box<Graph<'a>>),
    /// A kind this reader does not decode (strings, lists of tensors ...), with its `type` number.
    Other(i64),
}

/// An initializer (`TensorProto`). The data stays in the file's bytes.
#[derive(Clone, Default)]
pub struct Tensor<'a> {
    pub name: String,
    pub dims: Vec<i64>,
    pub data_type: i32,
    /// `raw_data` (little-endian), when the exporter used it.
    pub raw_data: Option<&'a [u8]>,
    pub float_data: Vec<f32>,
    pub int32_data: Vec<i32>,
    pub int64_data: Vec<i64>,
    pub double_data: Vec<f64>,
    /// `data_location` is EXTERNAL: the data is in another file this reader does not open.
    pub external: bool,
}

impl fmt::Debug for Tensor<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tensor")
            .field("name", &self.name)
            .field("dims", &self.dims)
            .field("data_type", &self.data_type)
            .field("raw_bytes", &self.raw_data.map(<[u8]>::len))
            .finish_non_exhaustive()
    }
}

impl Tensor<'_> {
    /// Number of elements the dims describe (1 for a scalar).
    pub fn element_count(&self) -> Result<usize> {
        let mut n: usize = 1;
        for &d in &self.dims {
            let d = usize::try_from(d).map_err(|_| self.bad(format!("negative dim {d}")))?;
            n = n
                .checked_mul(d)
                .ok_or_else(|| self.bad(format!("dims {:?} overflow", self.dims)))?;
        }
        Ok(n)
    }

    /// The dims as `usize`.
    pub fn shape(&self) -> Result<Vec<usize>> {
        self.dims
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| self.bad(format!("negative dim {d}"))))
            .collect()
    }

    fn bad(&self, reason: String) -> OnnxError {
        OnnxError::Tensor {
            name: self.name.clone(),
            reason,
        }
    }

    /// The values converted to `f32`, checked against the dims.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        if self.external {
            return Err(self.bad("data is stored in an external file".into()));
        }
        let n = self.element_count()?;
        let values: Vec<f32> = if let Some(raw) = self.raw_data {
            let width = match self.data_type {
                data_type::FLOAT | data_type::INT32 => 4,
                data_type::INT64 | data_type::DOUBLE => 8,
                data_type::FLOAT16 | data_type::BFLOAT16 => 2,
                data_type::UINT8 | data_type::INT8 | data_type::BOOL => 1,
                t => return Err(self.bad(format!("data type {t} is not supported"))),
            };
            let expected = n
                .checked_mul(width)
                .ok_or_else(|| self.bad("too big".into()))?;
            if raw.len() != expected {
                return Err(self.bad(format!(
                    "raw_data has {} bytes, dims {:?} of type {} need {expected}",
                    raw.len(),
                    self.dims,
                    self.data_type
                )));
            }
            let mut out = Vec::with_capacity(n);
            for c in raw.chunks_exact(width) {
                let v = match self.data_type {
                    data_type::FLOAT => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                    data_type::INT32 => i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32,
                    data_type::INT64 => {
                        i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                    }
                    data_type::DOUBLE => {
                        f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                    }
                    data_type::FLOAT16 => f16_to_f32(u16::from_le_bytes([c[0], c[1]])),
                    data_type::BFLOAT16 => {
                        f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16)
                    }
                    data_type::INT8 => c[0] as i8 as f32,
                    _ => f32::from(c[0]),
                };
                out.push(v);
            }
            out
        } else {
            match self.data_type {
                data_type::FLOAT => self.float_data.clone(),
                data_type::DOUBLE => self.double_data.iter().map(|&v| v as f32).collect(),
                data_type::INT64 => self.int64_data.iter().map(|&v| v as f32).collect(),
                data_type::INT32 | data_type::INT8 | data_type::UINT8 | data_type::BOOL => {
                    self.int32_data.iter().map(|&v| v as f32).collect()
                }
                data_type::FLOAT16 => self
                    .int32_data
                    .iter()
                    .map(|&v| f16_to_f32(v as u16))
                    .collect(),
                t => return Err(self.bad(format!("data type {t} is not supported"))),
            }
        };
        if values.len() != n {
            return Err(self.bad(format!(
                "has {} values, dims {:?} need {n}",
                values.len(),
                self.dims
            )));
        }
        Ok(values)
    }
}

/// IEEE half to single precision.
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x3ff);
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: normalise.
            let mut e: i32 = -14;
            let mut m = m;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | (((e + 127) as u32) << 23) | ((m & 0x3ff) << 13)
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// Reads a whole `ModelProto` from the bytes of an `.onnx` file.
pub fn parse_model(bytes: &[u8]) -> Result<Model<'_>> {
    let mut r = Reader::new(bytes, 0);
    let mut ir_version = 0;
    let mut producer_name = String::new();
    let mut producer_version = String::new();
    let mut graph = None;
    while let Some((field, wire, at)) = r.key("ModelProto")? {
        match (field, wire) {
            (1, WIRE_VARINT) => ir_version = r.varint("ModelProto.ir_version")? as i64,
            (2, WIRE_LEN) => producer_name = r.string("ModelProto.producer_name")?,
            (3, WIRE_LEN) => producer_version = r.string("ModelProto.producer_version")?,
            (7, WIRE_LEN) => {
                let sub = r.sub("ModelProto.graph")?;
                graph = Some(parse_graph(sub)?);
            }
            (1..=3 | 7, _) => return Err(r.wire_error("ModelProto", field, wire, at)),
            _ => r.skip("ModelProto", field, wire, at)?,
        }
    }
    Ok(Model {
        ir_version,
        producer_name,
        producer_version,
        graph: graph.ok_or(OnnxError::NoGraph)?,
    })
}

fn parse_graph(mut r: Reader<'_>) -> Result<Graph<'_>> {
    let mut g = Graph::default();
    while let Some((field, wire, at)) = r.key("GraphProto")? {
        match (field, wire) {
            (1, WIRE_LEN) => {
                let ctx = format!("GraphProto.node[{}]", g.nodes.len());
                g.nodes.push(parse_node(r.sub(&ctx)?, &ctx)?);
            }
            (2, WIRE_LEN) => g.name = r.string("GraphProto.name")?,
            (5, WIRE_LEN) => {
                let ctx = format!("GraphProto.initializer[{}]", g.initializers.len());
                g.initializers.push(parse_tensor(r.sub(&ctx)?, &ctx)?);
            }
            (11, WIRE_LEN) => {
                let ctx = format!("GraphProto.input[{}]", g.inputs.len());
                g.inputs.push(parse_value_info_name(r.sub(&ctx)?, &ctx)?);
            }
            (12, WIRE_LEN) => {
                let ctx = format!("GraphProto.output[{}]", g.outputs.len());
                g.outputs.push(parse_value_info_name(r.sub(&ctx)?, &ctx)?);
            }
            (1 | 2 | 5 | 11 | 12, _) => return Err(r.wire_error("GraphProto", field, wire, at)),
            _ => r.skip("GraphProto", field, wire, at)?,
        }
    }
    Ok(g)
}

fn parse_value_info_name(mut r: Reader<'_>, ctx: &str) -> Result<String> {
    let mut name = String::new();
    while let Some((field, wire, at)) = r.key(ctx)? {
        match (field, wire) {
            (1, WIRE_LEN) => name = r.string(&format!("{ctx}.name"))?,
            (1, _) => return Err(r.wire_error(ctx, field, wire, at)),
            _ => r.skip(ctx, field, wire, at)?,
        }
    }
    Ok(name)
}

fn parse_node<'a>(mut r: Reader<'a>, ctx: &str) -> Result<Node<'a>> {
    let mut n = Node::default();
    while let Some((field, wire, at)) = r.key(ctx)? {
        match (field, wire) {
            (1, WIRE_LEN) => n.inputs.push(r.string(&format!("{ctx}.input"))?),
            (2, WIRE_LEN) => n.outputs.push(r.string(&format!("{ctx}.output"))?),
            (3, WIRE_LEN) => n.name = r.string(&format!("{ctx}.name"))?,
            (4, WIRE_LEN) => n.op_type = r.string(&format!("{ctx}.op_type"))?,
            (5, WIRE_LEN) => {
                let actx = format!("{ctx}.attribute[{}]", n.attributes.len());
                n.attributes.push(parse_attribute(r.sub(&actx)?, &actx)?);
            }
            (1..=5, _) => return Err(r.wire_error(ctx, field, wire, at)),
            _ => r.skip(ctx, field, wire, at)?,
        }
    }
    Ok(n)
}

fn parse_attribute<'a>(mut r: Reader<'a>, ctx: &str) -> Result<Attribute<'a>> {
    let mut name = String::new();
    let mut tensor = None;
    let mut graph = None;
    let mut f = None;
    let mut i = None;
    let mut s = None;
    let mut floats = Vec::new();
    let mut ints = Vec::new();
    let mut kind = 0i64;
    while let Some((field, wire, at)) = r.key(ctx)? {
        match (field, wire) {
            (1, WIRE_LEN) => name = r.string(&format!("{ctx}.name"))?,
            (2, WIRE_FIXED32) => f = Some(r.f32(&format!("{ctx}.f"))?),
            (3, WIRE_VARINT) => i = Some(r.varint(&format!("{ctx}.i"))? as i64),
            (4, WIRE_LEN) => s = Some(r.bytes(&format!("{ctx}.s"))?.to_vec()),
            (5, WIRE_LEN) => {
                let tctx = format!("{ctx}.t");
                tensor = Some(parse_tensor(r.sub(&tctx)?, &tctx)?);
            }
            (6, WIRE_LEN) => graph = Some(parse_graph(r.sub(&format!("{ctx}.g"))?)?),
            (7, WIRE_LEN) => r.packed_f32(&mut floats, &format!("{ctx}.floats"))?,
            (7, WIRE_FIXED32) => floats.push(r.f32(&format!("{ctx}.floats"))?),
            (8, WIRE_LEN) => r.packed_varints(&mut ints, &format!("{ctx}.ints"))?,
            (8, WIRE_VARINT) => ints.push(r.varint(&format!("{ctx}.ints"))? as i64),
            (20, WIRE_VARINT) => kind = r.varint(&format!("{ctx}.type"))? as i64,
            (1..=8 | 20, _) => return Err(r.wire_error(ctx, field, wire, at)),
            _ => r.skip(ctx, field, wire, at)?,
        }
    }
    // AttributeProto.AttributeType: FLOAT 1, INT 2, STRING 3, TENSOR 4, GRAPH 5, FLOATS 6,
    // INTS 7.
    let value = match (kind, tensor, graph) {
        (4 | 0, Some(t), _) => AttributeValue::Tensor(Box::new(t)),
        (5 | 0, _, Some(g)) => AttributeValue::Graph(Box::new(g)),
        (kind, _, _) => scalar_attribute(kind, f, i, s, floats, ints),
    };
    Ok(Attribute { name, value })
}

fn scalar_attribute<'a>(
    kind: i64,
    f: Option<f32>,
    i: Option<i64>,
    s: Option<Vec<u8>>,
    floats: Vec<f32>,
    ints: Vec<i64>,
) -> AttributeValue<'a> {
    match kind {
        1 => AttributeValue::Float(f.unwrap_or(0.0)),
        2 => AttributeValue::Int(i.unwrap_or(0)),
        3 => AttributeValue::Bytes(s.unwrap_or_default()),
        6 => AttributeValue::Floats(floats),
        7 => AttributeValue::Ints(ints),
        // Old exporters may leave `type` out: go by the field that is present.
        0 if !ints.is_empty() => AttributeValue::Ints(ints),
        0 if !floats.is_empty() => AttributeValue::Floats(floats),
        0 if i.is_some() => AttributeValue::Int(i.unwrap_or(0)),
        0 if f.is_some() => AttributeValue::Float(f.unwrap_or(0.0)),
        0 if s.is_some() => AttributeValue::Bytes(s.unwrap_or_default()),
        other => AttributeValue::Other(other),
    }
}

fn parse_tensor<'a>(mut r: Reader<'a>, ctx: &str) -> Result<Tensor<'a>> {
    let mut t = Tensor::default();
    while let Some((field, wire, at)) = r.key(ctx)? {
        match (field, wire) {
            (1, WIRE_LEN) => r.packed_varints(&mut t.dims, &format!("{ctx}.dims"))?,
            (1, WIRE_VARINT) => t.dims.push(r.varint(&format!("{ctx}.dims"))? as i64),
            (2, WIRE_VARINT) => t.data_type = r.varint(&format!("{ctx}.data_type"))? as i32,
            (4, WIRE_LEN) => r.packed_f32(&mut t.float_data, &format!("{ctx}.float_data"))?,
            (4, WIRE_FIXED32) => t.float_data.push(r.f32(&format!("{ctx}.float_data"))?),
            (5, WIRE_LEN) => {
                let mut v = Vec::new();
                r.packed_varints(&mut v, &format!("{ctx}.int32_data"))?;
                t.int32_data.extend(v.into_iter().map(|x| x as i32));
            }
            (5, WIRE_VARINT) => t
                .int32_data
                .push(r.varint(&format!("{ctx}.int32_data"))? as i32),
            (7, WIRE_LEN) => r.packed_varints(&mut t.int64_data, &format!("{ctx}.int64_data"))?,
            (7, WIRE_VARINT) => t
                .int64_data
                .push(r.varint(&format!("{ctx}.int64_data"))? as i64),
            (8, WIRE_LEN) => t.name = r.string(&format!("{ctx}.name"))?,
            (9, WIRE_LEN) => t.raw_data = Some(r.bytes(&format!("{ctx}.raw_data"))?),
            (10, WIRE_LEN) => r.packed_f64(&mut t.double_data, &format!("{ctx}.double_data"))?,
            (10, WIRE_FIXED64) => t.double_data.push(r.f64(&format!("{ctx}.double_data"))?),
            // data_location: 1 = EXTERNAL.
            (14, WIRE_VARINT) => t.external = r.varint(&format!("{ctx}.data_location"))? == 1,
            (1 | 2 | 4 | 5 | 7 | 8 | 9 | 10 | 14, _) => {
                return Err(r.wire_error(ctx, field, wire, at))
            }
            _ => r.skip(ctx, field, wire, at)?,
        }
    }
    Ok(t)
}

const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_FIXED32: u8 = 5;

/// A cursor over one message's bytes. `base` is the offset of `buf[0]` in the file, so errors
/// name file offsets.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], base: usize) -> Self {
        Reader { buf, pos: 0, base }
    }

    fn offset(&self) -> usize {
        self.base + self.pos
    }

    fn truncated(&self, field: &str, needed: u64) -> OnnxError {
        OnnxError::Truncated {
            offset: self.offset(),
            field: field.to_string(),
            needed,
            available: self.buf.len() - self.pos,
        }
    }

    fn wire_error(&self, ctx: &str, field_number: u64, wire_type: u8, at: usize) -> OnnxError {
        OnnxError::WireType {
            offset: at,
            field: ctx.to_string(),
            field_number,
            wire_type,
        }
    }

    fn varint(&mut self, field: &str) -> Result<u64> {
        let start = self.offset();
        let mut value: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(self.truncated(field, 1));
            };
            self.pos += 1;
            if i == 9 && b > 1 {
                return Err(OnnxError::BadVarint {
                    offset: start,
                    field: field.to_string(),
                });
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(OnnxError::BadVarint {
            offset: start,
            field: field.to_string(),
        })
    }

    /// The next field's number, wire type and offset, or `None` at the end of the message.
    fn key(&mut self, ctx: &str) -> Result<Option<(u64, u8, usize)>> {
        if self.pos == self.buf.len() {
            return Ok(None);
        }
        let at = self.offset();
        let key = self.varint(&format!("{ctx} field key"))?;
        let field = key >> 3;
        let wire = (key & 7) as u8;
        if field == 0 {
            return Err(OnnxError::WireType {
                offset: at,
                field: ctx.to_string(),
                field_number: 0,
                wire_type: wire,
            });
        }
        Ok(Some((field, wire, at)))
    }

    fn take(&mut self, n: u64, field: &str) -> Result<&'a [u8]> {
        let left = self.buf.len() - self.pos;
        match usize::try_from(n) {
            Ok(n) if n <= left => {
                let s = &self.buf[self.pos..self.pos + n];
                self.pos += n;
                Ok(s)
            }
            _ => Err(self.truncated(field, n)),
        }
    }

    /// A length-delimited field's bytes.
    fn bytes(&mut self, field: &str) -> Result<&'a [u8]> {
        let len = self.varint(field)?;
        self.take(len, field)
    }

    /// A length-delimited field as a reader of its own.
    fn sub(&mut self, field: &str) -> Result<Reader<'a>> {
        let len = self.varint(field)?;
        let base = self.offset();
        let buf = self.take(len, field)?;
        Ok(Reader::new(buf, base))
    }

    fn string(&mut self, field: &str) -> Result<String> {
        let at = self.offset();
        let b = self.bytes(field)?;
        String::from_utf8(b.to_vec()).map_err(|_| OnnxError::Utf8 {
            offset: at,
            field: field.to_string(),
        })
    }

    fn f32(&mut self, field: &str) -> Result<f32> {
        let b = self.take(4, field)?;
        Ok(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn f64(&mut self, field: &str) -> Result<f64> {
        let b = self.take(8, field)?;
        Ok(f64::from_le_bytes([
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
        ]))
    }

    fn packed_varints(&mut self, out: &mut Vec<i64>, field: &str) -> Result<()> {
        let mut sub = self.sub(field)?;
        while sub.pos < sub.buf.len() {
            out.push(sub.varint(field)? as i64);
        }
        Ok(())
    }

    fn packed_f32(&mut self, out: &mut Vec<f32>, field: &str) -> Result<()> {
        let mut sub = self.sub(field)?;
        if sub.buf.len() % 4 != 0 {
            return Err(sub.truncated(field, (4 - sub.buf.len() % 4) as u64));
        }
        while sub.pos < sub.buf.len() {
            out.push(sub.f32(field)?);
        }
        Ok(())
    }

    fn packed_f64(&mut self, out: &mut Vec<f64>, field: &str) -> Result<()> {
        let mut sub = self.sub(field)?;
        if sub.buf.len() % 8 != 0 {
            return Err(sub.truncated(field, (8 - sub.buf.len() % 8) as u64));
        }
        while sub.pos < sub.buf.len() {
            out.push(sub.f64(field)?);
        }
        Ok(())
    }

    fn skip(&mut self, ctx: &str, field: u64, wire: u8, at: usize) -> Result<()> {
        let name = format!("{ctx} field {field}");
        match wire {
            WIRE_VARINT => self.varint(&name).map(drop),
            WIRE_FIXED64 => self.take(8, &name).map(drop),
            WIRE_LEN => self.bytes(&name).map(drop),
            WIRE_FIXED32 => self.take(4, &name).map(drop),
            _ => Err(self.wire_error(ctx, field, wire, at)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn field_len(field: u64, body: &[u8], out: &mut Vec<u8>) {
        varint(field << 3 | 2, out);
        varint(body.len() as u64, out);
        out.extend_from_slice(body);
    }

    fn field_varint(field: u64, v: u64, out: &mut Vec<u8>) {
        varint(field << 3, out);
        varint(v, out);
    }

    /// A model with one float initializer `w` [2] (raw data), one int64 initializer in
    /// `int64_data`, one Conv node with attributes, one input and one output.
    fn tiny_model() -> Vec<u8> {
        let mut w = Vec::new();
        let mut dims = Vec::new();
        varint(2, &mut dims);
        field_len(1, &dims, &mut w);
        field_varint(2, 1, &mut w);
        field_len(8, b"w", &mut w);
        let raw: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        field_len(9, &raw, &mut w);

        let mut k = Vec::new();
        field_varint(1, 3, &mut k);
        field_varint(2, 7, &mut k);
        field_len(8, b"k", &mut k);
        let mut packed = Vec::new();
        for v in [4u64, (-1i64) as u64, 9] {
            varint(v, &mut packed);
        }
        field_len(7, &packed, &mut k);

        let mut attr = Vec::new();
        field_len(1, b"strides", &mut attr);
        let mut ints = Vec::new();
        varint(8, &mut ints);
        field_len(8, &ints, &mut attr);
        field_varint(20, 7, &mut attr);
        let mut node = Vec::new();
        field_len(1, b"x", &mut node);
        field_len(1, b"w", &mut node);
        field_len(2, b"y", &mut node);
        field_len(3, b"/up/Conv", &mut node);
        field_len(4, b"Conv", &mut node);
        field_len(5, &attr, &mut node);

        let mut vi_x = Vec::new();
        field_len(1, b"x", &mut vi_x);
        let mut vi_y = Vec::new();
        field_len(1, b"y", &mut vi_y);

        let mut graph = Vec::new();
        field_len(1, &node, &mut graph);
        field_len(2, b"g", &mut graph);
        field_len(5, &w, &mut graph);
        field_len(5, &k, &mut graph);
        field_len(11, &vi_x, &mut graph);
        field_len(12, &vi_y, &mut graph);
        field_len(13, b"\x0a\x01z", &mut graph); // value_info, skipped

        let mut model = Vec::new();
        field_varint(1, 8, &mut model);
        field_len(2, b"test", &mut model);
        field_len(7, &graph, &mut model);
        model
    }

    #[test]
    fn reads_a_hand_built_model() {
        let bytes = tiny_model();
        let m = parse_model(&bytes).unwrap();
        assert_eq!(m.ir_version, 8);
        assert_eq!(m.producer_name, "test");
        let g = &m.graph;
        assert_eq!(g.name, "g");
        assert_eq!(g.inputs, ["x"]);
        assert_eq!(g.outputs, ["y"]);
        assert_eq!(g.initializers.len(), 2);
        assert_eq!(g.initializers[0].name, "w");
        assert_eq!(g.initializers[0].dims, [2]);
        assert_eq!(g.initializers[0].to_f32().unwrap(), [1.5, -2.0]);
        assert_eq!(g.initializers[1].to_f32().unwrap(), [4.0, -1.0, 9.0]);
        let n = &g.nodes[0];
        assert_eq!(n.op_type, "Conv");
        assert_eq!(n.name, "/up/Conv");
        assert_eq!(n.inputs, ["x", "w"]);
        assert_eq!(n.ints("strides"), Some(&[8i64][..]));
    }

    #[test]
    fn every_truncation_of_a_small_model_is_an_error() {
        let bytes = tiny_model();
        for cut in 1..bytes.len() {
            // A cut at a top-level field boundary before the graph loses the graph; any other
            // cut ends inside a field. Either way: an error, never a panic.
            assert!(parse_model(&bytes[..cut]).is_err(), "cut at {cut} parsed");
        }
    }

    #[test]
    fn every_byte_flip_of_a_small_model_is_handled() {
        let bytes = tiny_model();
        for i in 0..bytes.len() {
            for x in [0x01u8, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[i] ^= x;
                // Must not panic; converting the tensors must not panic either.
                if let Ok(m) = parse_model(&b) {
                    for t in &m.graph.initializers {
                        let _ = t.to_f32();
                    }
                }
            }
        }
    }

    #[test]
    fn errors_name_offset_and_field() {
        // Graph length says 100 bytes but only 3 follow.
        let bytes = [0x3a, 100, 1, 2, 3];
        let e = parse_model(&bytes).unwrap_err();
        assert_eq!(
            e,
            OnnxError::Truncated {
                offset: 2,
                field: "ModelProto.graph".into(),
                needed: 100,
                available: 3
            }
        );
        assert!(e.to_string().contains("byte 2"), "{e}");
        // An over-long varint.
        let bytes = [
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
        ];
        assert!(matches!(
            parse_model(&bytes),
            Err(OnnxError::BadVarint { offset: 1, .. })
        ));
        // Wire type 3 (start group) is not accepted.
        let bytes = [0x0b];
        assert!(matches!(
            parse_model(&bytes),
            Err(OnnxError::WireType { wire_type: 3, .. })
        ));
        assert_eq!(parse_model(&[]).unwrap_err(), OnnxError::NoGraph);
    }

    #[test]
    fn tensor_size_mismatch_is_an_error() {
        let t = Tensor {
            name: "t".into(),
            dims: vec![3],
            data_type: data_type::FLOAT,
            raw_data: Some(&[0u8; 8]),
            ..Tensor::default()
        };
        let e = t.to_f32().unwrap_err();
        assert!(e.to_string().contains("raw_data has 8 bytes"), "{e}");
    }

    #[test]
    fn half_precision_converts() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert!(f16_to_f32(0x7c00).is_infinite());
    }
}
