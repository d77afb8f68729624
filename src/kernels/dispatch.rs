//! Runtime choice of the SIMD level, made once per process.

use std::sync::OnceLock;

/// Instruction-set level of the kernels. Ordered: a level may use everything below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SimdLevel {
    /// Portable Rust, always compiled; the reference the other levels are tested against.
    Scalar,
    /// x86_64 AVX2 + FMA + F16C.
    Avx2,
    /// x86_64 AVX-512 F + BW + VL (plus AVX2, FMA, F16C).
    Avx512,
}

/// Environment variable that forces a lower level: `scalar`, `avx2` or `avx512`.
pub const SIMD_ENV: &str = "KVSPOOL_SIMD";

impl SimdLevel {
    /// All levels, lowest first.
    pub const ALL: [SimdLevel; 3] = [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512];

    /// Lower-case name, as accepted by [`SimdLevel::parse`] and `KVSPOOL_SIMD`.
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Scalar => "scalar",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
        }
    }

    /// Parse a level name (case-insensitive, surrounding blanks ignored).
    pub fn parse(s: &str) -> Option<SimdLevel> {
        let s = s.trim();
        Self::ALL
            .into_iter()
            .find(|l| l.name().eq_ignore_ascii_case(s))
    }

    /// The best level this CPU supports (detected once, then cached).
    pub fn detected() -> SimdLevel {
        static DETECTED: OnceLock<SimdLevel> = OnceLock::new();
        *DETECTED.get_or_init(detect)
    }

    /// Whether this CPU can run kernels of this level.
    pub fn is_available(self) -> bool {
        self <= Self::detected()
    }

    /// Every level this CPU can run, lowest first (always starts with `Scalar`).
    pub fn available() -> Vec<SimdLevel> {
        Self::ALL.into_iter().filter(|l| l.is_available()).collect()
    }
}

impl std::fmt::Display for SimdLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(target_arch = "x86_64")]
fn detect() -> SimdLevel {
    let avx2 = is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c");
    let avx512 = avx2
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl");
    if avx512 {
        SimdLevel::Avx512
    } else if avx2 {
        SimdLevel::Avx2
    } else {
        SimdLevel::Scalar
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> SimdLevel {
    SimdLevel::Scalar
}

/// Whether this CPU has AVX-512 VNNI (`vpdpbusd`) on top of [`SimdLevel::Avx512`]; detected
/// once. Only the 8-bit-activation kernels (`q8act`) use it, as a variant of the AVX-512 level.
pub fn avx512_vnni_detected() -> bool {
    static VNNI: OnceLock<bool> = OnceLock::new();
    *VNNI.get_or_init(|| SimdLevel::Avx512.is_available() && detect_vnni())
}

#[cfg(target_arch = "x86_64")]
fn detect_vnni() -> bool {
    is_x86_feature_detected!("avx512vnni")
}

#[cfg(not(target_arch = "x86_64"))]
fn detect_vnni() -> bool {
    false
}

/// The level chosen from the detected one and the value of `KVSPOOL_SIMD`: a known name lowers
/// the level; a level above the detected one, or an unknown name, is ignored (the returned
/// message says why, for logging).
pub fn resolve_level(detected: SimdLevel, env: Option<&str>) -> (SimdLevel, Option<String>) {
    match env {
        None => (detected, None),
        Some(v) if v.trim().is_empty() => (detected, None),
        Some(v) => match SimdLevel::parse(v) {
            Some(l) if l <= detected => (l, None),
            Some(l) => (
                detected,
                Some(format!(
                    "{SIMD_ENV}={l} is above what this CPU supports; using {detected}"
                )),
            ),
            None => (
                detected,
                Some(format!(
                    "{SIMD_ENV}={v:?} is not one of scalar, avx2, avx512; using {detected}"
                )),
            ),
        },
    }
}

/// The level every dispatched kernel uses: the detected level, lowered by `KVSPOOL_SIMD` if set.
/// Chosen on first use and fixed for the life of the process.
pub fn simd_level() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let env = std::env::var(SIMD_ENV).ok();
        let (level, warning) = resolve_level(SimdLevel::detected(), env.as_deref());
        if let Some(w) = warning {
            tracing::warn!("{w}");
        }
        tracing::debug!(level = level.name(), "kernels SIMD level");
        level
    })
}

/// Panic unless `level` can run here (the `*_at` entry points are for tests and benchmarks).
#[track_caller]
pub(crate) fn assert_available(level: SimdLevel) {
    assert!(
        level.is_available(),
        "SIMD level {level} is not supported by this CPU (best: {})",
        SimdLevel::detected()
    );
}
