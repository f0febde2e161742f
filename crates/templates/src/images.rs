//! The built-in images: where each comes from, its pinned checksum, and how PVE imports it.
//!
//! URLs are dated release directories, never `current`/`latest`, so a pinned checksum stays
//! true. Provenance of each checksum (the project's machines cannot reach the mirrors; each
//! value was taken from public material, and should be re-checked against the vendor's
//! signed sums file when the pin is next moved):
//! - Ubuntu 24.04 `release-20260926` OVA, SHA-256: reported as matching Ubuntu's published
//!   `SHA256SUMS` for that release in a public lab write-up; one source only.
//! - Debian 13 `20250924-2245` genericcloud qcow2, SHA-512 (Debian publishes `SHA512SUMS`
//!   only): from a public VM-definition file pinning that exact image; one source only.
//! - Kali 2025.4 genericcloud `tar.xz`, SHA-256: two independent public pins agree (a
//!   Terraform definition in hex, a Nix derivation in Nix base32).
//!
//! Air-gapped users point [`ImageCatalog::with_mirror`] at a plain HTTP(S) directory holding
//! the same files under the same names, or replace one image with
//! [`ImageCatalog::with_image`].

use std::collections::BTreeMap;

use crate::{BuiltIn, Error, Result};

/// A digest algorithm PVE's `download-url` can check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChecksumAlgorithm {
    /// SHA-256.
    Sha256,
    /// SHA-512.
    Sha512,
}

impl ChecksumAlgorithm {
    /// PVE's name (`sha256`, `sha512`).
    pub fn as_str(self) -> &'static str {
        match self {
            ChecksumAlgorithm::Sha256 => "sha256",
            ChecksumAlgorithm::Sha512 => "sha512",
        }
    }
}

/// A pinned digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Checksum {
    /// Algorithm.
    pub algorithm: ChecksumAlgorithm,
    /// Lower-case hex.
    pub hex: String,
}

impl Checksum {
    /// A SHA-256 digest from hex; fails unless it is 64 hex digits.
    pub fn sha256(hex: &str) -> Result<Self> {
        Self::new(ChecksumAlgorithm::Sha256, hex, 64)
    }

    /// A SHA-512 digest from hex; fails unless it is 128 hex digits.
    pub fn sha512(hex: &str) -> Result<Self> {
        Self::new(ChecksumAlgorithm::Sha512, hex, 128)
    }

    fn new(algorithm: ChecksumAlgorithm, hex: &str, len: usize) -> Result<Self> {
        let hex = hex.trim().to_ascii_lowercase();
        if hex.len() != len || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::Config {
                field: "images.checksum",
                message: format!(
                    "'{hex}' is not a {} digest ({len} hex digits)",
                    algorithm.as_str()
                ),
            });
        }
        Ok(Checksum { algorithm, hex })
    }
}

/// How PVE gets the image into an `import` volume.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    /// An OVA, downloaded by PVE; the disk to import is this member.
    Ova {
        /// The `.vmdk` inside (`ubuntu-noble-24.04-cloudimg.vmdk`).
        disk: String,
    },
    /// A qcow2 disk image, downloaded by PVE.
    Qcow2,
    /// A `tar.xz` holding a raw disk: PVE cannot unpack it for import, so this crate downloads
    /// it, unpacks `disk` and uploads the raw image (cached locally by the archive's checksum).
    TarXzRaw {
        /// The member holding the disk (`disk.raw`).
        disk: String,
    },
}

/// One built-in image.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageSpec {
    /// Where to fetch it.
    pub url: String,
    /// Its pinned digest.
    pub checksum: Checksum,
    /// How it is imported.
    pub format: ImageFormat,
}

impl ImageSpec {
    /// The file name at the end of the URL.
    pub fn remote_name(&self) -> &str {
        self.url.rsplit('/').next().unwrap_or(&self.url)
    }

    /// The short digest naming files and templates made from this image.
    pub(crate) fn short(&self) -> &str {
        &self.checksum.hex[..10]
    }
}

/// The built-in images, pinned, with the user's overrides applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageCatalog {
    images: BTreeMap<BuiltIn, ImageSpec>,
}

impl Default for ImageCatalog {
    fn default() -> Self {
        Self::pinned()
    }
}

impl ImageCatalog {
    /// The pinned images (see the module docs for where each checksum comes from).
    pub fn pinned() -> Self {
        let spec = |url: &str, checksum: Checksum, format| ImageSpec {
            url: url.to_owned(),
            checksum,
            format,
        };
        let images = BTreeMap::from([
            (
                BuiltIn::Ubuntu2404,
                spec(
                    "https://cloud-images.ubuntu.com/releases/noble/release-20260926/ubuntu-24.04-server-cloudimg-amd64.ova",
                    Checksum::sha256("513a22ebe3982b9387b038f8a2a6dad1af980d4623dca03511312e55ba620b1a")
                        .expect("pinned"),
                    ImageFormat::Ova {
                        disk: "ubuntu-noble-24.04-cloudimg.vmdk".into(),
                    },
                ),
            ),
            (
                BuiltIn::Debian13,
                spec(
                    "https://cloud.debian.org/images/cloud/trixie/20250924-2245/debian-13-genericcloud-amd64-20250924-2245.qcow2",
                    Checksum::sha512("25b430e6416b443620fc32975f40effe3d7ae6603060aa9563b80092f0b073734a35a8c56816ae4f4ea395d7e5599de7cba254f92a9465f6ce95b29a03a8e1f5")
                        .expect("pinned"),
                    ImageFormat::Qcow2,
                ),
            ),
            (
                BuiltIn::Kali20254,
                spec(
                    "https://kali.download/cloud-images/kali-2025.4/kali-linux-2025.4-cloud-genericcloud-amd64.tar.xz",
                    Checksum::sha256("649f20a4703f2324c0a5fa286a9260a5eb98d7f5d554d9aa179f284e8338fe8f")
                        .expect("pinned"),
                    ImageFormat::TarXzRaw {
                        disk: "disk.raw".into(),
                    },
                ),
            ),
        ]);
        ImageCatalog { images }
    }

    /// Fetches every image from `base` instead: `<base>/<file name of the pinned URL>`.
    /// Checksums stay pinned, so a mirror cannot substitute another image.
    #[must_use]
    pub fn with_mirror(mut self, base: &str) -> Self {
        let base = base.trim_end_matches('/');
        for spec in self.images.values_mut() {
            spec.url = format!("{base}/{}", spec.remote_name());
        }
        self
    }

    /// Replaces one image (another release, a local build). Its checksum becomes part of the
    /// template key, so templates of the old image are not reused.
    #[must_use]
    pub fn with_image(mut self, image: BuiltIn, spec: ImageSpec) -> Self {
        self.images.insert(image, spec);
        self
    }

    /// The image for `b`.
    pub fn get(&self, b: BuiltIn) -> &ImageSpec {
        &self.images[&b]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_urls_are_dated_and_checksums_well_formed() {
        let c = ImageCatalog::pinned();
        for b in BuiltIn::ALL {
            let s = c.get(b);
            assert!(
                !s.url.contains("/current/") && !s.url.contains("/latest/"),
                "{}",
                s.url
            );
            assert!(s.url.starts_with("https://"));
        }
    }

    #[test]
    fn a_mirror_keeps_file_names_and_checksums() {
        let c = ImageCatalog::pinned().with_mirror("http://10.0.0.5/img/");
        let k = c.get(BuiltIn::Kali20254);
        assert_eq!(
            k.url,
            "http://10.0.0.5/img/kali-linux-2025.4-cloud-genericcloud-amd64.tar.xz"
        );
        assert_eq!(
            k.checksum,
            ImageCatalog::pinned().get(BuiltIn::Kali20254).checksum
        );
    }

    #[test]
    fn malformed_checksums_are_refused() {
        assert!(Checksum::sha256("abc").is_err());
        assert!(Checksum::sha512(&"a".repeat(64)).is_err());
        assert!(Checksum::sha256(&"G".repeat(64)).is_err());
    }
}
