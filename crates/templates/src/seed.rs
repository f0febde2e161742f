//! The NoCloud seed that installs the QEMU guest agent on a cloud image's first boot.
//!
//! A NoCloud seed is an ISO9660 volume labelled `cidata` holding `meta-data`, `user-data` and
//! optionally `network-config`. The ISO is written with `hadris-iso` (pure Rust, maintained,
//! Joliet support): the long lower-case names cloud-init looks for need Joliet (or Rock
//! Ridge), which Linux's ISO9660 driver reads by default. Its bytes carry write timestamps,
//! so the storage file is named after a digest of the *inputs*, which are deterministic.

use std::io::Cursor;
use std::sync::Arc;

use hadris_iso::joliet::JolietLevel;
use hadris_iso::read::PathSeparator;
use hadris_iso::write::options::{BaseIsoLevel, CreationFeatures, IsoFormatOptions};
use hadris_iso::write::{File as IsoFile, InputFiles, IsoImageWriter};
use sha2::Digest;

/// The seed's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoCloudSeed {
    /// `meta-data`.
    pub meta_data: String,
    /// `user-data` (`#cloud-config`).
    pub user_data: String,
    /// `network-config` (v2).
    pub network_config: String,
}

impl NoCloudSeed {
    /// The bake seed: update the package lists, install `qemu-guest-agent` and `packages`,
    /// start the agent; DHCP on every `e*` NIC.
    pub fn bake(packages: &[String]) -> Self {
        let mut user =
            String::from("#cloud-config\npackage_update: true\npackages:\n  - qemu-guest-agent\n");
        for p in packages.iter().filter(|p| p.as_str() != "qemu-guest-agent") {
            user.push_str(&format!("  - {p}\n"));
        }
        // Images whose networkd waits for every NIC would stall boots of NIC-less clones.
        user.push_str(
            "runcmd:\n  - [systemctl, enable, --now, qemu-guest-agent]\n  - [systemctl, mask, systemd-networkd-wait-online.service]\n",
        );
        NoCloudSeed {
            meta_data: "instance-id: pvesandbox-bake\nlocal-hostname: pvesandbox-bake\n".into(),
            user_data: user,
            network_config: "version: 2\nethernets:\n  all:\n    match:\n      name: \"e*\"\n    dhcp4: true\n    dhcp6: false\n".into(),
        }
    }

    /// A digest of the files, naming the seed on the storage.
    pub fn digest(&self) -> String {
        let mut h = sha2::Sha256::new();
        for f in [&self.meta_data, &self.user_data, &self.network_config] {
            h.update((f.len() as u64).to_le_bytes());
            h.update(f.as_bytes());
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The storage file name (`pvesandbox-seed-<digest>.iso`).
    pub fn filename(&self) -> String {
        format!("{}seed-{}.iso", crate::FILE_PREFIX, &self.digest()[..12])
    }

    /// The ISO image.
    pub fn to_iso(&self) -> std::io::Result<Vec<u8>> {
        let file = |name: &str, text: &str| IsoFile::File {
            name: Arc::new(name.to_owned()),
            contents: text.as_bytes().to_vec(),
        };
        let files = InputFiles {
            path_separator: PathSeparator::ForwardSlash,
            files: vec![
                file("meta-data", &self.meta_data),
                file("user-data", &self.user_data),
                file("network-config", &self.network_config),
            ],
        };
        let opts = IsoFormatOptions {
            volume_name: "cidata".into(),
            system_id: None,
            volume_set_id: None,
            publisher_id: None,
            preparer_id: None,
            application_id: None,
            sector_size: 2048,
            path_separator: PathSeparator::ForwardSlash,
            features: CreationFeatures {
                filenames: BaseIsoLevel::Level1 {
                    supports_lowercase: false,
                    supports_rrip: false,
                },
                long_filenames: false,
                joliet: Some(JolietLevel::Level3),
                rock_ridge: None,
                el_torito: None,
                hybrid_boot: None,
            },
            strict_charset: false,
        };
        let out = IsoImageWriter::create(Cursor::new(Vec::new()), files, opts)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(out.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_iso_has_the_label_and_joliet_names_cloud_init_reads() {
        let seed = NoCloudSeed::bake(&["python3".into()]);
        let iso = seed.to_iso().unwrap();
        // Primary volume descriptor at sector 16, volume id at offset 40.
        let pvd = &iso[16 * 2048..17 * 2048];
        assert_eq!(&pvd[1..6], b"CD001");
        assert_eq!(std::str::from_utf8(&pvd[40..46]).unwrap(), "cidata");
        // A Joliet supplementary descriptor follows, and the names appear in UCS-2.
        let ucs2 = |s: &str| {
            s.encode_utf16()
                .flat_map(u16::to_be_bytes)
                .collect::<Vec<u8>>()
        };
        for name in ["user-data", "meta-data", "network-config"] {
            let n = ucs2(name);
            assert!(iso.windows(n.len()).any(|w| w == n), "{name} missing");
        }
        assert!(
            iso.windows(seed.user_data.len())
                .any(|w| w == seed.user_data.as_bytes())
        );
        assert!(
            seed.user_data
                .contains("  - qemu-guest-agent\n  - python3\n")
        );
    }

    #[test]
    fn the_name_follows_the_content() {
        let a = NoCloudSeed::bake(&[]);
        let b = NoCloudSeed::bake(&["vim".into()]);
        assert_ne!(a.filename(), b.filename());
        assert_eq!(a.filename(), NoCloudSeed::bake(&[]).filename());
    }
}
