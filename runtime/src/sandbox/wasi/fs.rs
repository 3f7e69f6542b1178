//! The lean host's read-only filesystem: a bundle's assets, preopened as descriptor 3 at the
//! bundle's mount. Without assets every call here answers as before (no preopens: `EBADF`).
//! Each request has its own descriptor table (at most `MAX_OPEN` entries) over the app
//! version's shared tree; reads copy straight from the tree into guest memory in bounded
//! chunks with the deadline checked between them. Nothing can be written.

use std::sync::Arc;

use super::*;
use crate::sandbox::assets::{Assets, Kind, Miss, MAX_NAME, MAX_PATH};

/// The preopened mount point.
const PREOPEN: i32 = 3;
/// Descriptors a request may hold open at once (the preopen included).
const MAX_OPEN: usize = 128;

const EEXIST: i32 = 20;
const EISDIR: i32 = 31;
const EMFILE: i32 = 33;
const ENAMETOOLONG: i32 = 37;
const ENOENT: i32 = 44;
const ENOTDIR: i32 = 54;
const EROFS: i32 = 69;

const FILETYPE_DIRECTORY: u8 = 3;
const FILETYPE_REGULAR_FILE: u8 = 4;

// Rights (WASI p1).
const FD_READ: u64 = 1 << 1;
const FD_SEEK: u64 = 1 << 2;
const FD_TELL: u64 = 1 << 5;
const FD_WRITE: u64 = 1 << 6;
const FD_ADVISE: u64 = 1 << 7;
const PATH_OPEN: u64 = 1 << 13;
const FD_READDIR: u64 = 1 << 14;
const PATH_FILESTAT_GET: u64 = 1 << 18;
const FD_FILESTAT_GET: u64 = 1 << 21;
const POLL_FD_READWRITE: u64 = 1 << 27;
const FILE_RIGHTS: u64 =
    FD_READ | FD_SEEK | FD_TELL | FD_ADVISE | FD_FILESTAT_GET | POLL_FD_READWRITE;
const DIR_RIGHTS: u64 = PATH_OPEN | FD_READDIR | PATH_FILESTAT_GET | FD_FILESTAT_GET;

// path_open's oflags and fdflags.
const O_CREAT: i32 = 1;
const O_DIRECTORY: i32 = 2;
const O_EXCL: i32 = 4;
const O_TRUNC: i32 = 8;
const FDFLAGS_APPEND: i32 = 1;

const FILESTAT_BYTES: usize = 64;
const DIRENT_BYTES: usize = 24;

struct Open {
    node: u32,
    pos: u64,
}

/// One request's descriptors over an app version's assets.
pub struct GuestFs {
    assets: Arc<Assets>,
    /// Descriptor `PREOPEN + i` is `open[i]`.
    open: Vec<Option<Open>>,
}

impl GuestFs {
    pub fn new(assets: Arc<Assets>) -> Self {
        let mut open = Vec::with_capacity(4);
        open.push(Some(Open { node: 0, pos: 0 }));
        Self { assets, open }
    }

    fn get(&self, fd: i32) -> Option<&Open> {
        let i = usize::try_from(fd.checked_sub(PREOPEN)?).ok()?;
        self.open.get(i)?.as_ref()
    }

    fn get_mut(&mut self, fd: i32) -> Option<&mut Open> {
        let i = usize::try_from(fd.checked_sub(PREOPEN)?).ok()?;
        self.open.get_mut(i)?.as_mut()
    }

    fn is_dir(&self, node: u32) -> bool {
        matches!(self.assets.node(node).map(|n| &n.kind), Some(Kind::Dir(_)))
    }

    fn size(&self, node: u32) -> u64 {
        self.assets.contents(node).map_or(0, |c| c.len() as u64)
    }

    /// A new descriptor. Slot 0 is the preopen's alone: once closed it stays closed, so no
    /// other descriptor is ever described as the mount.
    fn add(&mut self, node: u32) -> Result<i32, i32> {
        let slot = match self.open.iter().skip(1).position(Option::is_none) {
            Some(i) => i + 1,
            None if self.open.len() < MAX_OPEN => {
                self.open.push(None);
                self.open.len() - 1
            }
            None => return Err(EMFILE),
        };
        self.open[slot] = Some(Open { node, pos: 0 });
        Ok(PREOPEN + slot as i32)
    }

    /// Whether `fd` is one of this table's open descriptors (for `poll_oneoff`).
    pub fn is_open(&self, fd: u32) -> bool {
        i32::try_from(fd).is_ok_and(|fd| self.get(fd).is_some())
    }
}

fn miss_errno(m: Miss) -> i32 {
    match m {
        Miss::NotFound => ENOENT,
        Miss::NotDir => ENOTDIR,
        Miss::Escapes => ENOTCAPABLE,
        Miss::TooLong => ENAMETOOLONG,
    }
}

/// The descriptor's entry, or the errno for a descriptor this table does not hold.
macro_rules! open_or {
    ($fs:expr, $fd:expr) => {
        match $fs
            .as_ref()
            .and_then(|fs| fs.get($fd).map(|o| (fs, o.node, o.pos)))
        {
            Some(found) => found,
            None => return Ok(EBADF),
        }
    };
}

/// Read a guest path into the scratch buffer and resolve it from directory `dirfd`.
fn resolve_at(
    state: &mut HostState,
    view: &MemoryView,
    dirfd: i32,
    path: i32,
    len: i32,
) -> Result<u32, i32> {
    let fs = state.fs.as_ref().ok_or(EBADF)?;
    let dir = fs.get(dirfd).ok_or(EBADF)?.node;
    if !fs.is_dir(dir) {
        return Err(ENOTDIR);
    }
    let len = len as u32 as usize;
    if len > MAX_PATH {
        return Err(ENAMETOOLONG);
    }
    if !in_bounds(view, path as u32 as u64, len as u64) {
        return Err(EFAULT);
    }
    state.scratch.resize(len, 0);
    view.read(path as u32 as u64, &mut state.scratch)
        .map_err(mem_err)?;
    let fs = state.fs.as_ref().ok_or(EBADF)?;
    fs.assets.resolve(dir, &state.scratch).map_err(miss_errno)
}

/// The mount's name when `fd` is the open preopen.
fn preopen_mount(state: &HostState, fd: i32) -> Option<&str> {
    let fs = state.fs.as_ref()?;
    (fd == PREOPEN && fs.get(fd).is_some()).then(|| fs.assets.mount())
}

pub(super) fn fd_prestat_get(mut env: Env, fd: i32, out: i32) -> Result<i32, HostStop> {
    with_memory!(env, |state, view| {
        let Some(mount) = preopen_mount(state, fd) else {
            return Ok(EBADF);
        };
        let mut prestat = [0u8; 8];
        prestat[4..].copy_from_slice(&(mount.len() as u32).to_le_bytes());
        Ok(errno(
            view.write(out as u32 as u64, &prestat).map_err(mem_err),
        ))
    })
}

pub(super) fn fd_prestat_dir_name(
    mut env: Env,
    fd: i32,
    path: i32,
    len: i32,
) -> Result<i32, HostStop> {
    with_memory!(env, |state, view| {
        let Some(mount) = preopen_mount(state, fd) else {
            return Ok(EBADF);
        };
        let name = mount.as_bytes();
        if (len as u32 as usize) < name.len() {
            return Ok(ENAMETOOLONG);
        }
        Ok(errno(view.write(path as u32 as u64, name).map_err(mem_err)))
    })
}

#[allow(clippy::too_many_arguments)]
pub(super) fn path_open(
    mut env: Env,
    dirfd: i32,
    _dirflags: i32,
    path: i32,
    path_len: i32,
    oflags: i32,
    rights: i64,
    _inheriting: i64,
    fdflags: i32,
    out: i32,
) -> Result<i32, HostStop> {
    with_memory!(env, |state, view| {
        if state.fs.is_none() {
            return Ok(EBADF);
        }
        let node = match resolve_at(state, &view, dirfd, path, path_len) {
            Ok(node) => node,
            // A name that could be created (its directory exists) is refused as read-only.
            Err(ENOENT) if oflags & O_CREAT != 0 => {
                return Ok(if parent_exists(state, dirfd) {
                    EROFS
                } else {
                    ENOENT
                });
            }
            Err(e) => return Ok(e),
        };
        let Some(fs) = state.fs.as_mut() else {
            return Ok(EBADF);
        };
        if oflags & (O_CREAT | O_EXCL) == O_CREAT | O_EXCL {
            return Ok(EEXIST);
        }
        let dir = fs.is_dir(node);
        if oflags & O_DIRECTORY != 0 && !dir {
            return Ok(ENOTDIR);
        }
        if oflags & O_CREAT != 0 && dir {
            return Ok(EISDIR);
        }
        if oflags & O_TRUNC != 0 || fdflags & FDFLAGS_APPEND != 0 || rights as u64 & FD_WRITE != 0 {
            return Ok(if dir { EISDIR } else { EROFS });
        }
        if !in_bounds(&view, out as u32 as u64, 4) {
            return Ok(EFAULT);
        }
        match fs.add(node) {
            Ok(fd) => Ok(errno(write_u32(&view, out as u32 as u64, fd as u32))),
            Err(e) => Ok(e),
        }
    })
}

/// Whether the directory of the path in the scratch buffer (as `resolve_at` left it) exists.
fn parent_exists(state: &HostState, dirfd: i32) -> bool {
    let Some((fs, dir)) = state
        .fs
        .as_ref()
        .and_then(|fs| fs.get(dirfd).map(|o| (fs, o.node)))
    else {
        return false;
    };
    let path = &state.scratch;
    let parent = path
        .iter()
        .rposition(|b| *b == b'/')
        .map_or(&path[..0], |i| &path[..=i]);
    fs.assets.resolve(dir, parent).is_ok_and(|n| fs.is_dir(n))
}

/// `fd_read` and `fd_pread` on a file: copy from `at` into the iovecs; the position moves
/// only for `fd_read`.
pub(super) fn read(
    state: &mut HostState,
    view: &MemoryView,
    fd: i32,
    iovs: i32,
    iovs_len: i32,
    at: Option<u64>,
    nread: i32,
) -> Result<i32, HostStop> {
    let (fs, node, pos) = open_or!(state.fs, fd);
    let Some(contents) = fs.assets.contents(node) else {
        return Ok(EISDIR);
    };
    if !array_in_bounds(view, iovs, iovs_len, 8) {
        return Ok(EFAULT);
    }
    let mut offset = at.unwrap_or(pos);
    let mut total: u32 = 0;
    for i in 0..iovs_len as u32 {
        if i % ENTRIES_PER_DEADLINE_CHECK == 0 {
            check_deadline(state)?;
        }
        let (ptr, len) = match iovec(view, iovs, i) {
            Ok(entry) => entry,
            Err(e) => return Ok(e),
        };
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(contents.len());
        let want = (len as usize)
            .min(contents.len() - start)
            .min((u32::MAX - total) as usize);
        let mut done = 0;
        while done < want {
            let n = (want - done).min(COPY_CHUNK);
            if view
                .write(ptr + done as u64, &contents[start + done..start + done + n])
                .is_err()
            {
                return Ok(EFAULT);
            }
            done += n;
            if done < want {
                check_deadline(state)?;
            }
        }
        offset += want as u64;
        total += want as u32;
        if (want as u64) < len {
            break;
        }
    }
    if at.is_none() {
        if let Some(open) = state.fs.as_mut().and_then(|fs| fs.get_mut(fd)) {
            open.pos = offset;
        }
    }
    Ok(errno(write_u32(view, nread as u32 as u64, total)))
}

pub(super) fn fd_pread(
    mut env: Env,
    fd: i32,
    iovs: i32,
    iovs_len: i32,
    offset: i64,
    nread: i32,
) -> Result<i32, HostStop> {
    if (0..=2).contains(&fd) {
        return Ok(ESPIPE);
    }
    let Ok(offset) = u64::try_from(offset) else {
        return Ok(EINVAL);
    };
    with_memory!(env, |state, view| read(
        state,
        &view,
        fd,
        iovs,
        iovs_len,
        Some(offset),
        nread
    ))
}

pub(super) fn seek(
    state: &mut HostState,
    view: &MemoryView,
    fd: i32,
    offset: i64,
    whence: i32,
    out: i32,
) -> i32 {
    let Some(fs) = state.fs.as_mut() else {
        return EBADF;
    };
    let Some(open) = fs.get(fd) else {
        return EBADF;
    };
    if fs.is_dir(open.node) {
        return EISDIR;
    }
    let size = fs.size(open.node);
    let base = match whence {
        0 => 0,
        1 => open.pos,
        2 => size,
        _ => return EINVAL,
    };
    // A position must fit the guest's signed file offset.
    let Some(pos) = base
        .checked_add_signed(offset)
        .filter(|p| i64::try_from(*p).is_ok())
    else {
        return EINVAL;
    };
    if let Err(e) = write_u64(view, out as u32 as u64, pos) {
        return e;
    }
    if let Some(open) = fs.get_mut(fd) {
        open.pos = pos;
    }
    SUCCESS
}

pub(super) fn tell(state: &HostState, view: &MemoryView, fd: i32, out: i32) -> i32 {
    match state.fs.as_ref().and_then(|fs| fs.get(fd)) {
        Some(open) => errno(write_u64(view, out as u32 as u64, open.pos)),
        None => EBADF,
    }
}

pub(super) fn close(state: &mut HostState, fd: i32) -> i32 {
    let Some(fs) = state.fs.as_mut() else {
        return EBADF;
    };
    let slot = fd
        .checked_sub(PREOPEN)
        .and_then(|i| usize::try_from(i).ok())
        .and_then(|i| fs.open.get_mut(i));
    match slot {
        Some(slot @ Some(_)) => {
            *slot = None;
            SUCCESS
        }
        _ => EBADF,
    }
}

pub(super) fn fdstat(state: &HostState, view: &MemoryView, fd: i32, out: i32) -> i32 {
    let Some((fs, node)) = state
        .fs
        .as_ref()
        .and_then(|fs| fs.get(fd).map(|o| (fs, o.node)))
    else {
        return EBADF;
    };
    let (filetype, base, inheriting) = if fs.is_dir(node) {
        (FILETYPE_DIRECTORY, DIR_RIGHTS, DIR_RIGHTS | FILE_RIGHTS)
    } else {
        (FILETYPE_REGULAR_FILE, FILE_RIGHTS, 0)
    };
    let mut stat = [0u8; 24];
    stat[0] = filetype;
    stat[8..16].copy_from_slice(&base.to_le_bytes());
    stat[16..24].copy_from_slice(&inheriting.to_le_bytes());
    errno(view.write(out as u32 as u64, &stat).map_err(mem_err))
}

fn filestat(fs: &GuestFs, node: u32) -> [u8; FILESTAT_BYTES] {
    let mut stat = [0u8; FILESTAT_BYTES];
    stat[8..16].copy_from_slice(&(u64::from(node) + 1).to_le_bytes());
    stat[16] = if fs.is_dir(node) {
        FILETYPE_DIRECTORY
    } else {
        FILETYPE_REGULAR_FILE
    };
    stat[24..32].copy_from_slice(&1u64.to_le_bytes());
    stat[32..40].copy_from_slice(&fs.size(node).to_le_bytes());
    stat
}

pub(super) fn fd_filestat_get(mut env: Env, fd: i32, out: i32) -> Result<i32, HostStop> {
    with_memory!(env, |state, view| {
        let (fs, node, _) = open_or!(state.fs, fd);
        Ok(errno(
            view.write(out as u32 as u64, &filestat(fs, node))
                .map_err(mem_err),
        ))
    })
}

pub(super) fn path_filestat_get(
    mut env: Env,
    dirfd: i32,
    _flags: i32,
    path: i32,
    path_len: i32,
    out: i32,
) -> Result<i32, HostStop> {
    with_memory!(env, |state, view| {
        let node = match resolve_at(state, &view, dirfd, path, path_len) {
            Ok(node) => node,
            Err(e) => return Ok(e),
        };
        let Some(fs) = state.fs.as_ref() else {
            return Ok(EBADF);
        };
        Ok(errno(
            view.write(out as u32 as u64, &filestat(fs, node))
                .map_err(mem_err),
        ))
    })
}

/// Directory entries from `cookie` on: `.`, `..`, then the children by name. The buffer is
/// filled completely (the last entry cut short) unless the listing ends first.
pub(super) fn fd_readdir(
    mut env: Env,
    fd: i32,
    buf: i32,
    buf_len: i32,
    cookie: i64,
    bufused: i32,
) -> Result<i32, HostStop> {
    with_memory!(env, |state, view| {
        let (fs, node, _) = open_or!(state.fs, fd);
        let Some(Kind::Dir(children)) = fs.assets.node(node).map(|n| &n.kind) else {
            return Ok(ENOTDIR);
        };
        let parent = fs.assets.node(node).map_or(0, |n| n.parent);
        let (buf, cap) = (buf as u32 as u64, buf_len as u32 as u64);
        if !in_bounds(&view, buf, cap) || !in_bounds(&view, bufused as u32 as u64, 4) {
            return Ok(EFAULT);
        }
        // Entry i is `.`, `..`, then children[i - 2]: a cookie is an index, so a listing
        // resumed anywhere costs only what it returns.
        let total = children.len() as u64 + 2;
        let mut used: u64 = 0;
        let mut header = [0u8; DIRENT_BYTES];
        let mut i = cookie as u64;
        while i < total && used < cap {
            let (name, id) = match i {
                0 => (".", node),
                1 => ("..", parent),
                _ => {
                    let (name, id) = &children[(i - 2) as usize];
                    (&**name, *id)
                }
            };
            if (i + 1).is_multiple_of(u64::from(ENTRIES_PER_DEADLINE_CHECK)) {
                check_deadline(state)?;
            }
            let name = &name.as_bytes()[..name.len().min(MAX_NAME)];
            header[0..8].copy_from_slice(&(i + 1).to_le_bytes());
            header[8..16].copy_from_slice(&(u64::from(id) + 1).to_le_bytes());
            header[16..20].copy_from_slice(&(name.len() as u32).to_le_bytes());
            header[20] = if fs.is_dir(id) {
                FILETYPE_DIRECTORY
            } else {
                FILETYPE_REGULAR_FILE
            };
            for part in [&header[..], name] {
                let n = (part.len() as u64).min(cap - used);
                if view.write(buf + used, &part[..n as usize]).is_err() {
                    return Ok(EFAULT);
                }
                used += n;
            }
            i += 1;
        }
        Ok(errno(write_u32(&view, bufused as u32 as u64, used as u32)))
    })
}

pub(super) fn fd_advise(
    env: Env,
    fd: i32,
    _offset: i64,
    _len: i64,
    _advice: i32,
) -> Result<i32, HostStop> {
    Ok(match env.data().fs.as_ref().and_then(|fs| fs.get(fd)) {
        Some(_) => SUCCESS,
        None => EBADF,
    })
}
