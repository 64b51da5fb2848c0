//! Reads struct member offsets from the running kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Rust eBPF has no CO-RE field relocations, so the kernel programs take the offsets of the few
//! kernel struct fields they touch as load-time constants, read here from the kernel they will
//! run on. Only what that needs is parsed: the type and string sections, struct and union
//! members (descending into anonymous members), and the modifiers between them.
//!
//! (aya-obj parses BTF too, but keeps member access crate-private.)

use std::path::{Path, PathBuf};

/// Where the running kernel exposes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read kernel BTF from {path} (oxd needs a kernel built with CONFIG_DEBUG_INFO_BTF=y)")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("kernel BTF has no struct `{0}`")]
    NoStruct(String),
    #[error("kernel BTF struct `{strukt}` has no member `{member}`")]
    NoMember { strukt: String, member: String },
}

mod kind {
    pub(super) const INT: u32 = 1;
    pub(super) const PTR: u32 = 2;
    pub(super) const ARRAY: u32 = 3;
    pub(super) const STRUCT: u32 = 4;
    pub(super) const UNION: u32 = 5;
    pub(super) const ENUM: u32 = 6;
    pub(super) const FWD: u32 = 7;
    pub(super) const TYPEDEF: u32 = 8;
    pub(super) const VOLATILE: u32 = 9;
    pub(super) const CONST: u32 = 10;
    pub(super) const RESTRICT: u32 = 11;
    pub(super) const FUNC: u32 = 12;
    pub(super) const FUNC_PROTO: u32 = 13;
    pub(super) const VAR: u32 = 14;
    pub(super) const DATASEC: u32 = 15;
    pub(super) const FLOAT: u32 = 16;
    pub(super) const DECL_TAG: u32 = 17;
    pub(super) const TYPE_TAG: u32 = 18;
    pub(super) const ENUM64: u32 = 19;
}

#[derive(Clone, Copy, Debug)]
struct Member {
    name_off: u32,
    type_id: u32,
    /// Offset in bits.
    bit_offset: u32,
}

#[derive(Clone, Debug)]
struct Type {
    name_off: u32,
    kind: u32,
    /// For modifiers, typedefs and pointers: the referenced type.
    target: u32,
    members: Vec<Member>,
    /// The `vlen` of the type's info word (for a function prototype: its parameter count).
    vlen: u32,
}

/// A parsed BTF blob.
pub struct Btf {
    strings: Vec<u8>,
    /// Index = type id; id 0 is `void`.
    types: Vec<Type>,
}

impl Btf {
    /// Parses the running kernel's BTF.
    pub fn from_kernel() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let u16_at = |off: usize| -> Result<u16, BtfError> {
            data.get(off..off + 2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .ok_or(BtfError::Malformed("truncated"))
        };
        let u32_at = |off: usize| -> Result<u32, BtfError> {
            data.get(off..off + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or(BtfError::Malformed("truncated"))
        };
        if u16_at(0)? != BTF_MAGIC {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let hdr_len = u32_at(4)? as usize;
        let type_off = u32_at(8)? as usize;
        let type_len = u32_at(12)? as usize;
        let str_off = u32_at(16)? as usize;
        let str_len = u32_at(20)? as usize;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?
            .to_vec();
        let start = hdr_len + type_off;
        let end = start + type_len;
        if end > data.len() {
            return Err(BtfError::Malformed("type section out of bounds"));
        }
        let mut types = vec![Type {
            name_off: 0,
            kind: 0,
            target: 0,
            members: Vec::new(),
            vlen: 0,
        }];
        let mut off = start;
        while off < end {
            let name_off = u32_at(off)?;
            let info = u32_at(off + 4)?;
            let size_or_type = u32_at(off + 8)?;
            off += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            let extra = match kind {
                kind::INT | kind::VAR | kind::DECL_TAG => 4,
                kind::PTR
                | kind::FWD
                | kind::TYPEDEF
                | kind::VOLATILE
                | kind::CONST
                | kind::RESTRICT
                | kind::FUNC
                | kind::FLOAT
                | kind::TYPE_TAG => 0,
                kind::ARRAY => 12,
                kind::STRUCT | kind::UNION => {
                    for i in 0..vlen {
                        let m = off + i * 12;
                        let raw_offset = u32_at(m + 8)?;
                        members.push(Member {
                            name_off: u32_at(m)?,
                            type_id: u32_at(m + 4)?,
                            bit_offset: if kind_flag {
                                raw_offset & 0x00ff_ffff
                            } else {
                                raw_offset
                            },
                        });
                    }
                    vlen * 12
                }
                kind::ENUM | kind::FUNC_PROTO => vlen * 8,
                kind::DATASEC | kind::ENUM64 => vlen * 12,
                _ => return Err(BtfError::Malformed("unknown type kind")),
            };
            off += extra;
            types.push(Type {
                name_off,
                kind,
                target: size_or_type,
                members,
                vlen: info & 0xffff,
            });
        }
        Ok(Self { strings, types })
    }

    fn name(&self, off: u32) -> &[u8] {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        &rest[..end]
    }

    /// Follows typedefs and modifiers to the underlying type id.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize) {
                Some(t)
                    if matches!(
                        t.kind,
                        kind::TYPEDEF
                            | kind::VOLATILE
                            | kind::CONST
                            | kind::RESTRICT
                            | kind::TYPE_TAG
                    ) =>
                {
                    id = t.target;
                }
                _ => break,
            }
        }
        id
    }

    /// Whether the kernel has a function `name` (e.g. `bpf_lsm_file_ioctl_compat`: whether
    /// that LSM hook exists).
    pub fn has_function(&self, name: &str) -> bool {
        self.types
            .iter()
            .any(|t| t.kind == kind::FUNC && self.name(t.name_off) == name.as_bytes())
    }

    /// The number of parameters of the kernel function `name`, if the kernel has it (e.g.
    /// `bpf_lsm_inode_setattr`: 2 on 6.1, 3 from the kernels that pass a `struct mnt_idmap *`
    /// first).
    pub fn function_params(&self, name: &str) -> Option<u32> {
        let func = self
            .types
            .iter()
            .find(|t| t.kind == kind::FUNC && self.name(t.name_off) == name.as_bytes())?;
        let proto = self.types.get(func.target as usize)?;
        (proto.kind == kind::FUNC_PROTO).then_some(proto.vlen)
    }

    /// Byte offset of `member` in `struct strukt`, looking inside anonymous struct and union
    /// members (as in `struct file` on recent kernels).
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let id = self
            .types
            .iter()
            .position(|t| {
                t.kind == kind::STRUCT
                    && !t.members.is_empty()
                    && self.name(t.name_off) == strukt.as_bytes()
            })
            .ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        let bits = self
            .find_member(
                u32::try_from(id).map_err(|_| BtfError::Malformed("too many types"))?,
                member.as_bytes(),
                0,
            )
            .ok_or_else(|| BtfError::NoMember {
                strukt: strukt.to_owned(),
                member: member.to_owned(),
            })?;
        if bits % 8 != 0 {
            return Err(BtfError::Malformed("member is a bitfield"));
        }
        Ok(bits / 8)
    }

    fn find_member(&self, id: u32, member: &[u8], depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        let t = self.types.get(id as usize)?;
        for m in &t.members {
            let name = self.name(m.name_off);
            if name == member {
                return Some(m.bit_offset);
            }
            if name.is_empty() {
                let inner = self.resolve(m.type_id);
                let is_aggregate = self
                    .types
                    .get(inner as usize)
                    .is_some_and(|t| matches!(t.kind, kind::STRUCT | kind::UNION));
                if is_aggregate {
                    if let Some(off) = self.find_member(inner, member, depth + 1) {
                        return Some(m.bit_offset + off);
                    }
                }
            }
        }
        None
    }
}

/// Offsets of the kernel struct fields oxd's programs read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `offsetof(struct linux_binprm, file)`.
    pub bprm_file: u32,
    /// `offsetof(struct file, f_path)`.
    pub file_f_path: u32,
    /// `offsetof(struct file, f_mode)`.
    pub file_f_mode: u32,
    /// `offsetof(struct file, f_flags)`.
    pub file_f_flags: u32,
    /// `offsetof(struct file, f_inode)`.
    pub file_f_inode: u32,
    /// `offsetof(struct inode, i_ino)`.
    pub inode_i_ino: u32,
    /// `offsetof(struct inode, i_sb)`.
    pub inode_i_sb: u32,
    /// `offsetof(struct super_block, s_dev)`.
    pub sb_s_dev: u32,
    // mappings
    /// `offsetof(struct vm_area_struct, vm_file)`.
    pub vma_vm_file: u32,
    /// `offsetof(struct vm_area_struct, vm_flags)` (inside an anonymous union from 6.3).
    pub vma_vm_flags: u32,
    /// `offsetof(struct inode, i_flags)`.
    pub inode_i_flags: u32,
    // namespaces
    /// `offsetof(struct cred, user_ns)`.
    pub cred_user_ns: u32,
    /// `offsetof(struct task_struct, nsproxy)`.
    pub task_nsproxy: u32,
    /// `offsetof(struct nsproxy, mnt_ns)`.
    pub nsproxy_mnt_ns: u32,
    /// `offsetof(struct mount, mnt)`.
    pub mount_mnt: u32,
    /// `offsetof(struct mount, mnt_ns)`.
    pub mount_mnt_ns: u32,
    // ipc
    /// `offsetof(struct task_struct, cgroups)`.
    pub task_cgroups: u32,
    /// `offsetof(struct task_struct, tgid)`.
    pub task_tgid: u32,
    /// `offsetof(struct css_set, dfl_cgrp)`.
    pub css_set_dfl_cgrp: u32,
    /// `offsetof(struct cgroup, kn)`.
    pub cgroup_kn: u32,
    /// `offsetof(struct cgroup, self) + offsetof(struct cgroup_subsys_state, parent)`.
    pub cgroup_parent_css: u32,
    /// `offsetof(struct cgroup_subsys_state, cgroup)`.
    pub css_cgroup: u32,
    /// `offsetof(struct kernfs_node, id)`.
    pub kernfs_node_id: u32,
    /// `offsetof(struct socket, sk)`.
    pub socket_sk: u32,
    /// `offsetof(struct sock, sk_cgrp_data) + offsetof(struct sock_cgroup_data, cgroup)`.
    pub sock_cgroup: u32,
    /// `offsetof(struct sock, sk_peer_pid)`.
    pub sock_peer_pid: u32,
    /// `offsetof(struct pid, numbers) + offsetof(struct upid, nr)`.
    pub pid_nr: u32,
    /// `offsetof(struct unix_sock, addr)`.
    pub unix_sock_addr: u32,
    /// `offsetof(struct unix_address, len)`.
    pub unix_address_len: u32,
    /// `offsetof(struct unix_address, name)`.
    pub unix_address_name: u32,
    // File-system changes (the `path_*` hooks).
    /// `offsetof(struct path, mnt)`.
    pub path_mnt: u32,
    /// `offsetof(struct path, dentry)`.
    pub path_dentry: u32,
    /// `offsetof(struct vfsmount, mnt_root)`.
    pub vfsmount_mnt_root: u32,
    /// `offsetof(struct dentry, d_parent)`.
    pub dentry_d_parent: u32,
    /// `offsetof(struct dentry, d_name)`.
    pub dentry_d_name: u32,
    /// `offsetof(struct dentry, d_inode)`.
    pub dentry_d_inode: u32,
    /// `offsetof(struct qstr, len)`.
    pub qstr_len: u32,
    /// `offsetof(struct qstr, name)`.
    pub qstr_name: u32,
    /// `offsetof(struct mount, mnt_parent)`.
    pub mount_mnt_parent: u32,
    /// `offsetof(struct mount, mnt_mountpoint)`.
    pub mount_mnt_mountpoint: u32,
    // Unix socket rules
    /// `offsetof(struct unix_sock, path)`.
    pub unix_sock_path: u32,
    // Extended attributes and times (the `inode_*` hooks, given a dentry without a mount).
    /// `offsetof(struct dentry, d_sb)`.
    pub dentry_d_sb: u32,
    /// `offsetof(struct super_block, s_mounts)`: the file system's mounts.
    pub sb_s_mounts: u32,
    /// A mount's link in `s_mounts`: `offsetof(struct mount, mnt_instance)` (a `list_head`,
    /// up to 6.15), or `offsetof(struct mount, mnt_next_for_sb)` (a `struct mount *`, later).
    pub mount_sb_link: u32,
    /// 1 if `s_mounts` is a `list_head` (6.1, 6.12), 0 if it points at the first mount.
    pub sb_mounts_list: u32,
    /// `offsetof(struct task_struct, cred)`.
    pub task_cred: u32,
    /// `offsetof(struct task_struct, real_cred)`.
    pub task_real_cred: u32,
    /// `offsetof(struct iattr, ia_valid)`.
    pub iattr_ia_valid: u32,
    /// 1 if the `inode_setattr` hook takes a `struct mnt_idmap *` first (6.12; not 6.1).
    pub inode_setattr_idmap: u32,
    // The guard (`guard_kernel.rs`).
    /// `offsetof(struct user_namespace, level)`.
    pub user_ns_level: u32,
    /// `offsetof(struct inode, i_mode)`.
    pub inode_i_mode: u32,
    /// `offsetof(struct inode, i_rdev)`.
    pub inode_i_rdev: u32,
    /// `offsetof(struct super_block, s_magic)`.
    pub sb_s_magic: u32,
    /// `offsetof(struct inode, i_private)`.
    pub inode_i_private: u32,
    /// `offsetof(struct kernfs_node, priv)`.
    pub kernfs_node_priv: u32,
    /// `offsetof(struct kernfs_node, parent)` (`__parent` from 6.15).
    pub kernfs_node_parent: u32,
    /// `offsetof(struct kernfs_node, flags)`.
    pub kernfs_node_flags: u32,
    /// `offsetof(struct kernfs_node, name)` (`__name` from 6.15).
    pub kernfs_node_name: u32,
    /// `offsetof(struct proc_inode, vfs_inode)`.
    pub proc_inode_vfs_inode: u32,
    /// `offsetof(struct proc_inode, pid)`.
    pub proc_inode_pid: u32,
    /// `offsetof(struct pid, tasks)` (`tasks[PIDTYPE_PID].first`).
    pub pid_tasks: u32,
    /// `offsetof(struct task_struct, pid_links)` (`pid_links[PIDTYPE_PID]`).
    pub task_pid_links: u32,
}

impl KernelOffsets {
    pub fn read(btf: &Btf) -> Result<Self, BtfError> {
        Ok(Self {
            bprm_file: btf.member_offset("linux_binprm", "file")?,
            file_f_path: btf.member_offset("file", "f_path")?,
            file_f_mode: btf.member_offset("file", "f_mode")?,
            file_f_flags: btf.member_offset("file", "f_flags")?,
            file_f_inode: btf.member_offset("file", "f_inode")?,
            inode_i_ino: btf.member_offset("inode", "i_ino")?,
            inode_i_sb: btf.member_offset("inode", "i_sb")?,
            sb_s_dev: btf.member_offset("super_block", "s_dev")?,
            vma_vm_file: btf.member_offset("vm_area_struct", "vm_file")?,
            vma_vm_flags: btf.member_offset("vm_area_struct", "vm_flags")?,
            inode_i_flags: btf.member_offset("inode", "i_flags")?,
            cred_user_ns: btf.member_offset("cred", "user_ns")?,
            task_nsproxy: btf.member_offset("task_struct", "nsproxy")?,
            nsproxy_mnt_ns: btf.member_offset("nsproxy", "mnt_ns")?,
            mount_mnt: btf.member_offset("mount", "mnt")?,
            mount_mnt_ns: btf.member_offset("mount", "mnt_ns")?,
            task_cgroups: btf.member_offset("task_struct", "cgroups")?,
            task_tgid: btf.member_offset("task_struct", "tgid")?,
            css_set_dfl_cgrp: btf.member_offset("css_set", "dfl_cgrp")?,
            cgroup_kn: btf.member_offset("cgroup", "kn")?,
            cgroup_parent_css: btf.member_offset("cgroup", "self")?
                + btf.member_offset("cgroup_subsys_state", "parent")?,
            css_cgroup: btf.member_offset("cgroup_subsys_state", "cgroup")?,
            kernfs_node_id: btf.member_offset("kernfs_node", "id")?,
            socket_sk: btf.member_offset("socket", "sk")?,
            sock_cgroup: btf.member_offset("sock", "sk_cgrp_data")?
                + btf.member_offset("sock_cgroup_data", "cgroup")?,
            sock_peer_pid: btf.member_offset("sock", "sk_peer_pid")?,
            pid_nr: btf.member_offset("pid", "numbers")? + btf.member_offset("upid", "nr")?,
            unix_sock_addr: btf.member_offset("unix_sock", "addr")?,
            unix_address_len: btf.member_offset("unix_address", "len")?,
            unix_address_name: btf.member_offset("unix_address", "name")?,
            path_mnt: btf.member_offset("path", "mnt")?,
            path_dentry: btf.member_offset("path", "dentry")?,
            vfsmount_mnt_root: btf.member_offset("vfsmount", "mnt_root")?,
            dentry_d_parent: btf.member_offset("dentry", "d_parent")?,
            dentry_d_name: btf.member_offset("dentry", "d_name")?,
            dentry_d_inode: btf.member_offset("dentry", "d_inode")?,
            qstr_len: btf.member_offset("qstr", "len")?,
            qstr_name: btf.member_offset("qstr", "name")?,
            mount_mnt_parent: btf.member_offset("mount", "mnt_parent")?,
            mount_mnt_mountpoint: btf.member_offset("mount", "mnt_mountpoint")?,
            unix_sock_path: btf.member_offset("unix_sock", "path")?,
            dentry_d_sb: btf.member_offset("dentry", "d_sb")?,
            sb_s_mounts: btf.member_offset("super_block", "s_mounts")?,
            mount_sb_link: btf
                .member_offset("mount", "mnt_instance")
                .or_else(|_| btf.member_offset("mount", "mnt_next_for_sb"))?,
            sb_mounts_list: u32::from(btf.member_offset("mount", "mnt_instance").is_ok()),
            task_cred: btf.member_offset("task_struct", "cred")?,
            task_real_cred: btf.member_offset("task_struct", "real_cred")?,
            iattr_ia_valid: btf.member_offset("iattr", "ia_valid")?,
            inode_setattr_idmap: u32::from(
                btf.function_params("bpf_lsm_inode_setattr")
                    .ok_or(BtfError::Malformed("no bpf_lsm_inode_setattr function"))?
                    == 3,
            ),
            user_ns_level: btf.member_offset("user_namespace", "level")?,
            inode_i_mode: btf.member_offset("inode", "i_mode")?,
            inode_i_rdev: btf.member_offset("inode", "i_rdev")?,
            sb_s_magic: btf.member_offset("super_block", "s_magic")?,
            inode_i_private: btf.member_offset("inode", "i_private")?,
            kernfs_node_priv: btf.member_offset("kernfs_node", "priv")?,
            kernfs_node_parent: btf
                .member_offset("kernfs_node", "parent")
                .or_else(|_| btf.member_offset("kernfs_node", "__parent"))?,
            kernfs_node_flags: btf.member_offset("kernfs_node", "flags")?,
            kernfs_node_name: btf
                .member_offset("kernfs_node", "name")
                .or_else(|_| btf.member_offset("kernfs_node", "__name"))?,
            proc_inode_vfs_inode: btf.member_offset("proc_inode", "vfs_inode")?,
            proc_inode_pid: btf.member_offset("proc_inode", "pid")?,
            pid_tasks: btf.member_offset("pid", "tasks")?,
            task_pid_links: btf.member_offset("task_struct", "pid_links")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob with: 1 int, 2 struct path {int a; int b;}, 3 anon union {path p;},
    /// 4 struct file {int x; int y; union {...};}.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0path\0a\0b\0p\0file\0x\0y\0".to_vec();
        let s = |name: &str| -> u32 {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .map(|p| u32::try_from(p + 1).unwrap())
                .unwrap()
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        push(&[s("int"), 1 << 24, 4, 32]);
        push(&[s("path"), (4 << 24) | 2, 8, s("a"), 1, 0, s("b"), 1, 32]);
        push(&[0, (5 << 24) | 1, 8, s("p"), 2, 0]);
        push(&[
            s("file"),
            (4 << 24) | 3,
            16,
            s("x"),
            1,
            0,
            s("y"),
            1,
            32,
            0,
            3,
            64,
        ]);
        let mut out = Vec::new();
        out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for w in [
            24u32,
            0,
            u32::try_from(types.len()).unwrap(),
            u32::try_from(types.len()).unwrap(),
            u32::try_from(strings.len()).unwrap(),
        ] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&types);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn finds_members_through_anonymous_unions() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.member_offset("path", "b").unwrap(), 4);
        assert_eq!(btf.member_offset("file", "y").unwrap(), 4);
        assert_eq!(btf.member_offset("file", "p").unwrap(), 8);
        assert!(matches!(
            btf.member_offset("file", "zz"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.member_offset("nope", "a"),
            Err(BtfError::NoStruct(_))
        ));
    }

    #[test]
    fn reads_this_kernels_offsets() {
        let btf = Btf::from_kernel().expect("this kernel exposes BTF");
        let offsets = KernelOffsets::read(&btf).expect("linux_binprm.file and file.f_path");
        assert!(
            offsets.file_f_path > 0 && offsets.file_f_path < 512,
            "{offsets:?}"
        );
        assert!(offsets.bprm_file < 1024, "{offsets:?}");
    }
}
