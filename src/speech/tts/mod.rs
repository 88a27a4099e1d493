//! Text to speech with the Piper voice (a VITS network): reading its ONNX export and importing the
//! weights into the safetensors layout a candle port loads.
pub mod import;
pub mod onnx;
