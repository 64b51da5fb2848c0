//! File identities: the one part of compiling that looks at the file system, kept apart so
//! that [`super::compile`] stays pure.

use std::{os::unix::fs::MetadataExt as _, path::Path};

use oxd_common::InodeKey;

/// The identity the kernel gives a file: `sb->s_dev` as `MKDEV(major, minor)` (major in the
/// top 12 bits) and `inode->i_ino`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    pub dev: u32,
    pub ino: u64,
}

impl FileId {
    /// The file's key in the denied-file map, in policy slot `slot`.
    pub fn key(self, slot: u32) -> InodeKey {
        InodeKey {
            ino: self.ino,
            dev: self.dev,
            slot,
        }
    }
}

/// The identity of the file at `path` (following symlinks), as the kernel gives it. `None` if
/// the file does not exist.
pub fn file_identity(path: &Path) -> Option<FileId> {
    let meta = std::fs::metadata(path).ok()?;
    let dev = meta.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    Some(FileId {
        dev: (major << 20) | minor,
        ino: meta.ino(),
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    #[test]
    fn hard_links_share_an_identity_and_missing_files_have_none() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let file = dir.path().join("file");
        let link = dir.path().join("link");
        let other = dir.path().join("other");
        std::fs::write(&file, b"x").expect("write a file");
        std::fs::write(&other, b"y").expect("write a file");
        std::fs::hard_link(&file, &link).expect("make a hard link");
        let id = file_identity(&file).expect("the file exists");
        assert_eq!(file_identity(&link), Some(id));
        assert_ne!(file_identity(&other), Some(id));
        assert_eq!(file_identity(&dir.path().join("missing")), None);
        let meta = std::fs::metadata(&file).expect("stat the file");
        assert_eq!(id.ino, meta.ino());
        assert_eq!(id.dev >> 20, libc::major(meta.dev()));
        assert_eq!(id.dev & 0xf_ffff, libc::minor(meta.dev()));
        assert_eq!(
            id.key(7),
            InodeKey {
                ino: id.ino,
                dev: id.dev,
                slot: 7
            }
        );
    }
}
