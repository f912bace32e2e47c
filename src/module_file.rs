//! Module files as the kernel gets them: plain `.ko`, or `.ko.xz`, `.ko.zst`, `.ko.gz`.
//!
//! Since 6.6 a kernel built with `CONFIG_MODULE_DECOMPRESS` decompresses one format itself
//! (`/sys/module/compression` names it); such files go to `finit_module` with
//! `MODULE_INIT_COMPRESSED_FILE`, which also lets the kernel merge concurrent loads of the same
//! file. Any other compressed file is decompressed here, in memory, and handed to `init_module`,
//! as libkmod does.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// `MODULE_INIT_COMPRESSED_FILE` from `<uapi/linux/module.h>` (not in nix yet).
pub const MODULE_INIT_COMPRESSED_FILE: u32 = 4;
/// Largest decompressed module accepted (the biggest Debian module, amdgpu, is about 25 MiB).
const MAX_MODULE_SIZE: u64 = 512 * 1024 * 1024;

/// Compression of a module file, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// `.ko.xz`
    Xz,
    /// `.ko.zst`
    Zstd,
    /// `.ko.gz`
    Gzip,
}

impl Compression {
    /// The compression of `path`, or `None` for a plain module.
    pub fn of(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()? {
            "xz" => Some(Compression::Xz),
            "zst" => Some(Compression::Zstd),
            "gz" => Some(Compression::Gzip),
            _ => None,
        }
    }

    /// The name `/sys/module/compression` uses for this format.
    pub fn sysfs_name(self) -> &'static str {
        match self {
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Gzip => "gzip",
        }
    }
}

/// Which format the running kernel decompresses itself (`/sys/module/compression`), if any.
pub fn kernel_compression(sys_module: &Path) -> Option<String> {
    let text = std::fs::read_to_string(sys_module.join("compression")).ok()?;
    let name = text.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// Reads and decompresses a module file into memory.
pub fn decompress(path: &Path, compression: Compression) -> io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let mut image = Vec::new();
    let limited = |r: Box<dyn Read>| r.take(MAX_MODULE_SIZE + 1);
    let mut reader = match compression {
        Compression::Xz => limited(Box::new(liblzma::read::XzDecoder::new_multi_decoder(file))),
        Compression::Zstd => limited(Box::new(zstd::stream::read::Decoder::new(file)?)),
        Compression::Gzip => limited(Box::new(flate2::read::MultiGzDecoder::new(file))),
    };
    reader.read_to_end(&mut image)?;
    if image.len() as u64 > MAX_MODULE_SIZE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "decompressed module larger than 512 MiB",
        ));
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const IMAGE: &[u8] = b"\x7fELF pretend module image";

    #[test]
    fn detects_compression_by_name() {
        assert_eq!(
            Compression::of(Path::new("a/e1000.ko.xz")),
            Some(Compression::Xz)
        );
        assert_eq!(
            Compression::of(Path::new("e1000.ko.zst")),
            Some(Compression::Zstd)
        );
        assert_eq!(
            Compression::of(Path::new("e1000.ko.gz")),
            Some(Compression::Gzip)
        );
        assert_eq!(Compression::of(Path::new("e1000.ko")), None);
    }

    #[test]
    fn decompresses_every_format() {
        let dir = tempfile::tempdir().unwrap();
        let xz = dir.path().join("m.ko.xz");
        let mut enc = liblzma::write::XzEncoder::new(File::create(&xz).unwrap(), 6);
        enc.write_all(IMAGE).unwrap();
        enc.finish().unwrap();
        let zst = dir.path().join("m.ko.zst");
        std::fs::write(&zst, zstd::encode_all(IMAGE, 3).unwrap()).unwrap();
        let gz = dir.path().join("m.ko.gz");
        let mut enc = flate2::write::GzEncoder::new(File::create(&gz).unwrap(), Default::default());
        enc.write_all(IMAGE).unwrap();
        enc.finish().unwrap();
        for path in [xz, zst, gz] {
            let c = Compression::of(&path).unwrap();
            assert_eq!(decompress(&path, c).unwrap(), IMAGE, "{path:?}");
        }
    }

    #[test]
    fn corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("m.ko.xz");
        std::fs::write(&bad, b"not xz at all").unwrap();
        assert!(decompress(&bad, Compression::Xz).is_err());
    }

    #[test]
    fn reads_kernel_compression() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(kernel_compression(dir.path()), None);
        std::fs::write(dir.path().join("compression"), "xz\n").unwrap();
        assert_eq!(kernel_compression(dir.path()).as_deref(), Some("xz"));
    }
}
