//! G.711, the telephone network's 8 kHz codecs: µ-law (PCMU, North America and Japan) and A-law
//! (PCMA, everywhere else). One byte per sample, logarithmic, with the encoder and decoder of
//! ITU-T G.711 computed directly (no tables to ship).

/// Encodes one 16-bit sample as µ-law.
pub fn mulaw_encode(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32635;
    let mut s = i32::from(sample);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(CLIP) + BIAS;
    let exponent = (7 - (s.leading_zeros() as i32 - 17)).clamp(0, 7);
    let mantissa = (s >> (exponent + 3)) & 0x0F;
    !(sign | (exponent << 4) | mantissa) as u8
}

/// Decodes one µ-law byte to a 16-bit sample.
pub fn mulaw_decode(byte: u8) -> i16 {
    let b = !byte;
    let exponent = i32::from((b >> 4) & 0x07);
    let mantissa = i32::from(b & 0x0F);
    let magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
    (if b & 0x80 != 0 { -magnitude } else { magnitude }) as i16
}

/// Encodes one 16-bit sample as A-law.
pub fn alaw_encode(sample: i16) -> u8 {
    let s = i32::from(sample) >> 3; // A-law works on 13-bit magnitudes
    let (sign, magnitude) = if s >= 0 { (0x80, s) } else { (0x00, -s - 1) };
    let magnitude = magnitude.min(0x0FFF);
    let code = if magnitude < 32 {
        magnitude >> 1
    } else {
        let segment = 31 - magnitude.leading_zeros() as i32 - 4; // 1..=7
        (segment << 4) | ((magnitude >> segment) & 0x0F)
    };
    ((sign | code) ^ 0x55) as u8
}

/// Decodes one A-law byte to a 16-bit sample.
pub fn alaw_decode(byte: u8) -> i16 {
    let b = i32::from(byte ^ 0x55);
    let segment = (b >> 4) & 0x07;
    let mantissa = b & 0x0F;
    let magnitude = if segment == 0 {
        (mantissa << 4) + 8
    } else {
        ((mantissa << 4) + 0x108) << (segment - 1)
    };
    (if b & 0x80 != 0 { magnitude } else { -magnitude }) as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_relative_error(encode: fn(i16) -> u8, decode: fn(u8) -> i16) -> f64 {
        let mut worst: f64 = 0.0;
        for s in (-32768i32..=32767).step_by(7) {
            let s = s as i16;
            let back = decode(encode(s));
            let error = f64::from((i32::from(back) - i32::from(s)).abs());
            if i32::from(s).abs() > 256 {
                worst = worst.max(error / f64::from(i32::from(s).abs()));
            }
        }
        worst
    }

    #[test]
    fn mulaw_round_trip_keeps_the_log_scale_precision() {
        assert!(max_relative_error(mulaw_encode, mulaw_decode) < 0.07);
        assert_eq!(mulaw_decode(mulaw_encode(0)), 0);
        assert_eq!(mulaw_encode(0), 0xFF, "µ-law silence is 0xFF");
    }

    #[test]
    fn alaw_round_trip_keeps_the_log_scale_precision() {
        assert!(max_relative_error(alaw_encode, alaw_decode) < 0.07);
        assert_eq!(alaw_encode(0), 0xD5, "A-law silence is 0xD5");
        assert_eq!(alaw_decode(0xD5), 8);
    }

    #[test]
    fn every_code_decodes_to_a_value_that_encodes_back_to_it() {
        for b in 0..=255u8 {
            assert_eq!(alaw_encode(alaw_decode(b)), b, "A-law {b:#04x}");
            // µ-law has two codes for zero (0x7F and 0xFF); both decode to 0.
            if b != 0x7F {
                assert_eq!(mulaw_encode(mulaw_decode(b)), b, "µ-law {b:#04x}");
            }
        }
    }
}
