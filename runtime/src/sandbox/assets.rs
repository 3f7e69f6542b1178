//! A bundle's static assets as a read-only directory tree the lean host shows its guest: one
//! preopened directory (the bundle's `assets_mount`, e.g. `/assets`) over the assets tar, held
//! once per app version and shared by its requests. Files are ranges of the tar's bytes; a
//! guest reads them through `fd_read`/`fd_pread` and can open, stat, list and seek, never
//! write. Paths resolve inside the tree only: `..` stops at the mount, and links, devices and
//! anything but regular files and directories are refused when the bundle loads.

use std::collections::BTreeMap;
use std::path::Component;

use bytes::Bytes;

/// Entries (files and directories) an assets tree may hold.
pub const MAX_ENTRIES: usize = 65_536;
/// Bytes in one path component, and in a whole path a guest may name.
pub const MAX_NAME: usize = 255;
pub const MAX_PATH: usize = 4096;
/// Directories nested below the mount.
const MAX_DEPTH: usize = 64;

#[derive(Debug)]
pub enum Kind {
    /// Children sorted by name (a listing's cookie is an index into them).
    Dir(Vec<(Box<str>, u32)>),
    /// A range of the tar's bytes.
    File { offset: usize, len: usize },
}

#[derive(Debug)]
pub struct Node {
    pub parent: u32,
    pub kind: Kind,
}

/// The tree; node 0 is the mount point.
#[derive(Debug)]
pub struct Assets {
    mount: String,
    data: Bytes,
    nodes: Vec<Node>,
}

/// Why a path does not resolve, as a WASI errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    NotFound,
    NotDir,
    /// Leaves the tree (`..` above the mount, or an absolute path).
    Escapes,
    TooLong,
}

impl Assets {
    /// Index an assets tar (plain, uncompressed) to be shown at `mount`.
    pub fn from_tar(mount: &str, data: Bytes) -> Result<Self, String> {
        let mount = check_mount(mount)?;
        let mut tree = Builder {
            nodes: vec![(0, None)],
            children: vec![BTreeMap::new()],
        };
        let bytes = data.clone();
        let mut archive = tar::Archive::new(&bytes[..]);
        let entries = archive
            .entries()
            .map_err(|e| format!("assets: not a tar archive: {e}"))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("assets: damaged tar archive: {e}"))?;
            let path = entry
                .path()
                .map_err(|e| format!("assets: an entry's path is not valid: {e}"))?
                .into_owned();
            let shown = path.display().to_string();
            let mut names = Vec::new();
            for c in path.components() {
                match c {
                    Component::Normal(n) => {
                        let n = n
                            .to_str()
                            .ok_or_else(|| format!("assets: {shown}: path is not UTF-8"))?;
                        if n.len() > MAX_NAME {
                            return Err(format!(
                                "assets: {shown}: a name is over {MAX_NAME} bytes"
                            ));
                        }
                        names.push(n);
                    }
                    Component::CurDir => {}
                    _ => {
                        return Err(format!(
                            "assets: {shown}: entries must be relative paths without `..`"
                        ))
                    }
                }
            }
            if names.len() > MAX_DEPTH {
                return Err(format!("assets: {shown}: nested deeper than {MAX_DEPTH}"));
            }
            let kind = entry.header().entry_type();
            let node = if kind.is_dir() {
                None
            } else if kind.is_file() {
                let offset = usize::try_from(entry.raw_file_position()).unwrap_or(usize::MAX);
                let len = usize::try_from(entry.size()).unwrap_or(usize::MAX);
                if offset.checked_add(len).is_none_or(|end| end > data.len()) {
                    return Err(format!("assets: {shown}: truncated"));
                }
                Some((offset, len))
            } else {
                return Err(format!(
                    "assets: {shown}: only regular files and directories are allowed (links and special files are not)"
                ));
            };
            tree.insert(&names, node, &shown)?;
        }
        let nodes = tree
            .nodes
            .into_iter()
            .zip(tree.children)
            .map(|((parent, file), children)| Node {
                parent,
                kind: match file {
                    Some((offset, len)) => Kind::File { offset, len },
                    None => Kind::Dir(children.into_iter().collect()),
                },
            })
            .collect();
        Ok(Self { mount, data, nodes })
    }

    /// Where the guest sees the tree.
    pub fn mount(&self) -> &str {
        &self.mount
    }

    pub fn node(&self, id: u32) -> Option<&Node> {
        self.nodes.get(id as usize)
    }
}

/// The tree while a tar is read: each node's parent and file range (`None` for a directory),
/// and its children by name.
struct Builder {
    nodes: Vec<(u32, Option<(usize, usize)>)>,
    children: Vec<BTreeMap<Box<str>, u32>>,
}

impl Builder {
    fn insert(
        &mut self,
        names: &[&str],
        file: Option<(usize, usize)>,
        shown: &str,
    ) -> Result<(), String> {
        let Some((last, dirs)) = names.split_last() else {
            // The archive's root itself.
            return if file.is_none() {
                Ok(())
            } else {
                Err(format!("assets: {shown}: a file at the root"))
            };
        };
        let mut at = 0u32;
        for name in dirs {
            at = self.child_dir(at, name, shown)?;
        }
        match file {
            None => {
                self.child_dir(at, last, shown)?;
            }
            Some(range) => {
                if self.children[at as usize].contains_key(*last) {
                    return Err(format!("assets: {shown}: appears twice"));
                }
                let new = self.push(at, Some(range), shown)?;
                self.children[at as usize].insert((*last).into(), new);
            }
        }
        Ok(())
    }

    /// The directory `name` under directory `dir`, created if absent.
    fn child_dir(&mut self, dir: u32, name: &str, shown: &str) -> Result<u32, String> {
        if let Some(&existing) = self.children[dir as usize].get(name) {
            return match self.nodes[existing as usize].1 {
                None => Ok(existing),
                Some(_) => Err(format!("assets: {shown}: a parent is a file")),
            };
        }
        let new = self.push(dir, None, shown)?;
        self.children[dir as usize].insert(name.into(), new);
        Ok(new)
    }

    /// A new node; the mount itself does not count as an entry.
    fn push(
        &mut self,
        parent: u32,
        file: Option<(usize, usize)>,
        shown: &str,
    ) -> Result<u32, String> {
        if self.nodes.len() > MAX_ENTRIES {
            return Err(format!(
                "assets: {shown}: more than {MAX_ENTRIES} files and directories"
            ));
        }
        self.nodes.push((parent, file));
        self.children.push(BTreeMap::new());
        Ok((self.nodes.len() - 1) as u32)
    }
}

impl Assets {
    /// A file's bytes.
    pub fn contents(&self, id: u32) -> Option<&[u8]> {
        match self.node(id)?.kind {
            Kind::File { offset, len } => self.data.get(offset..offset + len),
            Kind::Dir(_) => None,
        }
    }

    /// Resolve a guest path relative to directory `dir`: `.`, `..` (not above the mount) and
    /// repeated or trailing slashes as POSIX does. A trailing slash requires a directory.
    pub fn resolve(&self, dir: u32, path: &[u8]) -> Result<u32, Miss> {
        if path.len() > MAX_PATH {
            return Err(Miss::TooLong);
        }
        if path.first() == Some(&b'/') {
            return Err(Miss::Escapes);
        }
        let mut at = dir;
        for name in path.split(|b| *b == b'/') {
            let Some(Node { parent, kind }) = self.node(at) else {
                return Err(Miss::NotFound);
            };
            let Kind::Dir(children) = kind else {
                return Err(Miss::NotDir);
            };
            at = match name {
                b"" | b"." => at,
                b".." if at == 0 => return Err(Miss::Escapes),
                b".." => *parent,
                _ => {
                    let i = children
                        .binary_search_by(|(n, _)| n.as_bytes().cmp(name))
                        .map_err(|_| Miss::NotFound)?;
                    children[i].1
                }
            };
        }
        if path.last() == Some(&b'/')
            && !matches!(self.node(at).map(|n| &n.kind), Some(Kind::Dir(_)))
        {
            return Err(Miss::NotDir);
        }
        Ok(at)
    }
}

/// A mount is an absolute, normalized path other than `/`.
fn check_mount(mount: &str) -> Result<String, String> {
    let valid = mount.starts_with('/')
        && mount.len() > 1
        && mount.len() <= MAX_NAME
        && mount[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if valid {
        Ok(mount.to_string())
    } else {
        Err(format!(
            "assets: mount {mount:?} must be an absolute path such as /assets, without `.`, `..` or a trailing slash"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar(entries: &[(&str, Option<&[u8]>)]) -> Bytes {
        let mut b = tar::Builder::new(Vec::new());
        for (path, body) in entries {
            let mut h = tar::Header::new_gnu();
            match body {
                Some(body) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(body.len() as u64);
                    h.set_mode(0o644);
                    b.append_data(&mut h, path, *body).expect("file");
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    b.append_data(&mut h, path, &[][..]).expect("dir");
                }
            }
        }
        Bytes::from(b.into_inner().expect("tar"))
    }

    #[test]
    fn resolves_inside_the_tree_only() {
        let a = Assets::from_tar(
            "/assets",
            tar(&[
                ("css/", None),
                ("css/site.css", Some(b"body{}")),
                ("index.html", Some(b"<h1>hi</h1>")),
                ("img/logo.svg", Some(b"<svg/>")),
            ]),
        )
        .expect("assets");
        let css = a.resolve(0, b"css/site.css").expect("css");
        assert_eq!(a.contents(css), Some(&b"body{}"[..]));
        let logo = a
            .resolve(0, b"./img//logo.svg")
            .expect("implicit directory");
        assert_eq!(a.contents(logo), Some(&b"<svg/>"[..]));
        assert_eq!(
            a.resolve(0, b"css/../index.html").map(|n| a.contents(n)),
            Ok(Some(&b"<h1>hi</h1>"[..]))
        );
        assert_eq!(a.resolve(0, b"../etc/passwd"), Err(Miss::Escapes));
        assert_eq!(a.resolve(0, b"css/../../x"), Err(Miss::Escapes));
        assert_eq!(a.resolve(0, b"/etc/passwd"), Err(Miss::Escapes));
        assert_eq!(a.resolve(0, b"index.html/"), Err(Miss::NotDir));
        assert_eq!(a.resolve(0, b"index.html/x"), Err(Miss::NotDir));
        assert_eq!(a.resolve(0, b"nope"), Err(Miss::NotFound));
        assert_eq!(a.resolve(0, &[b'a'; MAX_PATH + 1]), Err(Miss::TooLong));
        let dir = a.resolve(0, b"css").expect("dir");
        assert_eq!(a.resolve(dir, b"site.css"), Ok(css));
        assert_eq!(a.resolve(dir, b".."), Ok(0));
    }

    #[test]
    fn refuses_what_a_tree_cannot_hold() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "passwd", "/etc/passwd")
            .expect("link");
        let link = Bytes::from(b.into_inner().expect("tar"));
        let e = Assets::from_tar("/assets", link).expect_err("a symlink");
        assert!(e.contains("only regular files and directories"), "{e}");
        let e = Assets::from_tar("/assets", tar(&[("a", Some(b"1")), ("a/b", Some(b"2"))]))
            .expect_err("a file as a parent");
        assert!(e.contains("a parent is a file"), "{e}");
        let e = Assets::from_tar("/assets", tar(&[("a", Some(b"1")), ("a", Some(b"2"))]))
            .expect_err("twice");
        assert!(e.contains("appears twice"), "{e}");
        for mount in ["assets", "/", "/a/../b", "/a/"] {
            assert!(Assets::from_tar(mount, tar(&[])).is_err(), "{mount}");
        }
        assert!(Assets::from_tar("/assets", Bytes::from(vec![b'x'; 1024])).is_err());
    }
}
