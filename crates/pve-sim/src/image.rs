//! What the simulator learns from the bytes of an uploaded or downloaded file, and the model of
//! a cloud image's first boot.
//!
//! Files stream through a [`Sniffer`] once: it computes the digests PVE can check
//! (`checksum-algorithm`), lists the members of a tar archive (an OVA is one: `import-from`
//! may name `local:import/x.ova/disk.vmdk`), and keeps small files whole so that an ISO can be
//! read as a NoCloud seed.
//!
//! **The cloud-image model.** A disk imported from an `import` volume boots as a stock cloud
//! image: cloud-init is installed, the QEMU guest agent is not, so the agent never answers.
//! When such a VM starts with a NoCloud seed attached as a CD-ROM (an ISO9660 volume labelled
//! `cidata`, with `meta-data` and a `#cloud-config` `user-data`), cloud-init runs it; if the
//! user-data installs `qemu-guest-agent` (a `packages:` entry) and starts it (a `runcmd` line
//! with `systemctl` and `qemu-guest-agent`), the agent is on the disk from then on: it answers
//! on this boot and on every later boot, in clones and in templates made from the disk. The
//! user-data is matched as text, not parsed as YAML: cheap, and enough to catch a seed that
//! forgets the agent. `cloud-init status --wait` run through the agent answers `status: done`
//! ([`crate::guest`]'s cloud-init wrapper).

use std::collections::BTreeMap;

use sha2::Digest;

/// Files up to this size are kept whole (seed ISOs are a few KiB).
const KEEP_LIMIT: usize = 4 << 20;

/// Streaming digests, tar member list and (for small files) the bytes.
pub(crate) struct Sniffer {
    size: u64,
    sha1: sha1::Sha1,
    sha256: sha2::Sha256,
    sha512: sha2::Sha512,
    /// Offset of the next tar header, while the stream still looks like a tar archive.
    tar_next: Option<u64>,
    header: Vec<u8>,
    members: Vec<(String, u64)>,
    kept: Option<Vec<u8>>,
}

/// The result of [`Sniffer::finish`].
#[derive(Debug, Clone, Default)]
pub(crate) struct Sniffed {
    pub size: u64,
    pub digests: BTreeMap<&'static str, String>,
    /// Tar members (name, size), empty when the file is not a tar archive.
    pub members: Vec<(String, u64)>,
    /// The whole file, when it is small.
    pub bytes: Option<Vec<u8>>,
}

impl Sniffer {
    pub(crate) fn new() -> Self {
        Sniffer {
            size: 0,
            sha1: sha1::Sha1::new(),
            sha256: sha2::Sha256::new(),
            sha512: sha2::Sha512::new(),
            tar_next: Some(0),
            header: Vec::with_capacity(512),
            members: Vec::new(),
            kept: Some(Vec::new()),
        }
    }

    pub(crate) fn feed(&mut self, mut chunk: &[u8]) {
        self.sha1.update(chunk);
        self.sha256.update(chunk);
        self.sha512.update(chunk);
        if let Some(k) = &mut self.kept {
            if k.len() + chunk.len() <= KEEP_LIMIT {
                k.extend_from_slice(chunk);
            } else {
                self.kept = None;
            }
        }
        while let Some(next) = self.tar_next {
            let end = self.size + chunk.len() as u64;
            if chunk.is_empty() || next >= end {
                break;
            }
            let skip = (next.max(self.size) - self.size) as usize;
            let want = 512 - self.header.len();
            let take = want.min(chunk.len() - skip);
            self.header.extend_from_slice(&chunk[skip..skip + take]);
            let consumed = skip + take;
            self.size += consumed as u64;
            chunk = &chunk[consumed..];
            if self.header.len() == 512 {
                let h = std::mem::take(&mut self.header);
                self.tar_next = parse_tar_header(&h).map(|(name, size)| {
                    let at = next + 512 + size.div_ceil(512) * 512;
                    if !name.is_empty() {
                        self.members.push((name, size));
                    }
                    at
                });
                if h.iter().all(|b| *b == 0) {
                    // End-of-archive block.
                    self.tar_next = None;
                }
            }
        }
        self.size += chunk.len() as u64;
    }

    pub(crate) fn finish(self) -> Sniffed {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        Sniffed {
            size: self.size,
            digests: BTreeMap::from([
                ("sha1", hex(&self.sha1.finalize())),
                ("sha256", hex(&self.sha256.finalize())),
                ("sha512", hex(&self.sha512.finalize())),
            ]),
            members: self.members,
            bytes: self.kept,
        }
    }
}

/// A ustar header's (name, size); `None` when the block is not a valid header.
fn parse_tar_header(h: &[u8]) -> Option<(String, u64)> {
    if h.iter().all(|b| *b == 0) {
        return Some((String::new(), 0));
    }
    let stored: u64 = h[148..156]
        .iter()
        .filter(|b| b.is_ascii_digit())
        .fold(0, |a, b| a * 8 + u64::from(b - b'0'));
    let sum: u64 = h
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(*b)
            }
        })
        .sum();
    if sum != stored {
        return None;
    }
    let cstr = |b: &[u8]| {
        let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    };
    let mut name = cstr(&h[0..100]);
    if &h[257..262] == b"ustar" {
        let prefix = cstr(&h[345..500]);
        if !prefix.is_empty() {
            name = format!("{prefix}/{name}");
        }
    }
    let size = h[124..136]
        .iter()
        .filter(|b| (b'0'..=b'7').contains(b))
        .fold(0u64, |a, b| a * 8 + u64::from(b - b'0'));
    // Only regular files are members one can import.
    let kind = h[156];
    let name = if kind == b'0' || kind == 0 {
        name
    } else {
        String::new()
    };
    Some((name, size))
}

/// A NoCloud seed read from an ISO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoCloudSeed {
    /// Whether cloud-init would install and start the QEMU guest agent from it.
    pub installs_agent: bool,
}

/// Reads `iso` as a NoCloud seed: `None` unless it is an ISO9660 volume labelled `cidata`
/// with `meta-data` and a `#cloud-config` `user-data`.
pub(crate) fn read_seed(iso: &[u8]) -> Option<NoCloudSeed> {
    let files = iso9660_files(iso)?;
    let label = files.label.trim().to_ascii_lowercase();
    if label != "cidata" {
        return None;
    }
    let get = |n: &str| files.files.get(n);
    get("meta-data")?;
    let user = String::from_utf8_lossy(get("user-data")?).into_owned();
    if !user.starts_with("#cloud-config") {
        return None;
    }
    Some(NoCloudSeed {
        installs_agent: installs_agent(&user),
    })
}

/// `packages:` lists `qemu-guest-agent` and some `runcmd` line starts it with systemctl.
fn installs_agent(user_data: &str) -> bool {
    let mut section = "";
    let (mut pkg, mut run) = (false, false);
    for line in user_data.lines() {
        if !line.starts_with([' ', '-', '\t']) {
            section = line.split(':').next().unwrap_or_default();
            continue;
        }
        let item = line.trim().trim_start_matches('-').trim();
        match section {
            "packages" if item.trim_matches(['"', '\'']) == "qemu-guest-agent" => pkg = true,
            "runcmd" if item.contains("systemctl") && item.contains("qemu-guest-agent") => {
                run = true;
            }
            _ => {}
        }
    }
    pkg && run
}

struct IsoFiles {
    label: String,
    files: BTreeMap<String, Vec<u8>>,
}

/// Root-directory files of an ISO9660 image, by their Joliet names when the image has a
/// Joliet tree, else by their ISO9660 names (lower-cased, `;1` dropped), as Linux's mount
/// shows them.
fn iso9660_files(iso: &[u8]) -> Option<IsoFiles> {
    const SECTOR: usize = 2048;
    let mut primary = None;
    let mut joliet = None;
    for n in 16..32 {
        let d = iso.get(n * SECTOR..(n + 1) * SECTOR)?;
        if &d[1..6] != b"CD001" {
            return None;
        }
        match d[0] {
            1 => primary = Some(d),
            2 if matches!(&d[88..91], b"%/@" | b"%/C" | b"%/E") => joliet = Some(d),
            255 => break,
            _ => {}
        }
    }
    let primary = primary?;
    let label = String::from_utf8_lossy(&primary[40..72]).into_owned();
    let (desc, wide) = match joliet {
        Some(j) => (j, true),
        None => (primary, false),
    };
    let root = &desc[156..190];
    let u32le = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let (extent, len) = (u32le(&root[2..6]), u32le(&root[10..14]));
    let dir = iso.get(extent * SECTOR..extent * SECTOR + len)?;
    let mut files = BTreeMap::new();
    let mut i = 0;
    while i < dir.len() {
        let rl = dir[i] as usize;
        if rl == 0 {
            // Records do not cross sectors: skip to the next one.
            i = (i / SECTOR + 1) * SECTOR;
            continue;
        }
        let r = dir.get(i..i + rl)?;
        let flags = r[25];
        let nl = r[32] as usize;
        let raw = r.get(33..33 + nl)?;
        i += rl;
        if flags & 2 != 0 || raw == [0] || raw == [1] {
            continue;
        }
        let name = if wide {
            let units: Vec<u16> = raw
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16_lossy(&units)
        } else {
            String::from_utf8_lossy(raw).to_ascii_lowercase()
        };
        let name = name.split(';').next().unwrap_or_default();
        let name = name.strip_suffix('.').unwrap_or(name).to_owned();
        let (fe, fl) = (u32le(&r[2..6]), u32le(&r[10..14]));
        files.insert(name, iso.get(fe * SECTOR..fe * SECTOR + fl)?.to_vec());
    }
    Some(IsoFiles { label, files })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, data) in members {
            let mut h = [0u8; 512];
            h[..name.len()].copy_from_slice(name.as_bytes());
            h[100..107].copy_from_slice(b"0000644");
            h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
            h[156] = b'0';
            h[257..263].copy_from_slice(b"ustar\0");
            h[148..156].copy_from_slice(b"        ");
            let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
            h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
            out.extend_from_slice(&h);
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    #[test]
    fn tar_members_are_found_across_odd_chunk_boundaries() {
        let tar = tar_of(&[("x.ovf", b"<ovf/>"), ("disk1.vmdk", &[7u8; 1500])]);
        for chunk in [1, 7, 511, 512, 513, 4096] {
            let mut s = Sniffer::new();
            for c in tar.chunks(chunk) {
                s.feed(c);
            }
            let got = s.finish();
            assert_eq!(
                got.members,
                vec![("x.ovf".to_owned(), 6), ("disk1.vmdk".to_owned(), 1500)],
                "chunk size {chunk}"
            );
            assert_eq!(got.size, tar.len() as u64);
        }
    }

    #[test]
    fn a_non_tar_file_has_no_members() {
        let mut s = Sniffer::new();
        s.feed(&[0x51, 0x46, 0x49, 0xfb, 1, 2, 3]);
        s.feed(&[9u8; 2000]);
        assert!(s.finish().members.is_empty());
    }

    #[test]
    fn agent_install_needs_the_package_and_a_start() {
        let good = "#cloud-config\npackages:\n  - qemu-guest-agent\nruncmd:\n  - [systemctl, enable, --now, qemu-guest-agent]\n";
        assert!(installs_agent(good));
        assert!(!installs_agent(
            "#cloud-config\npackages:\n  - qemu-guest-agent\n"
        ));
        assert!(!installs_agent(
            "#cloud-config\nruncmd:\n  - systemctl start qemu-guest-agent\n"
        ));
    }
}
