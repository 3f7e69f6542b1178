//! The lean WASI preview 1 host: every p1 function, implemented over in-memory stdio, args,
//! environment, clocks and randomness. The only filesystem is a bundle's assets, read-only
//! (`fs`); without them there are no preopens. No sockets and no process control: those calls
//! return an errno. It must never touch the host's own files, environment or network.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::runtime::Handle;
use wasmer::wasmparser::ValType;
use wasmer::{Function, FunctionEnv, FunctionEnvMut, Memory, MemoryView, Store};

use super::cgi::EnvBlock;
use super::io::{GuestInput, GuestOutput, HostStop, StderrBuf};
use super::scheduler;
use crate::error::{Failure, Limit};

// WASI errno values.
const SUCCESS: i32 = 0;
const EBADF: i32 = 8;
const EFAULT: i32 = 21;
const EINVAL: i32 = 28;
const ENOSYS: i32 = 52;
const ENOTSUP: i32 = 58;
const ESPIPE: i32 = 70;
const ENOTCAPABLE: i32 = 76;

/// Every WASI preview 1 function: name, parameter types, result types
/// (`i` = i32, `I` = i64).
pub const WASI_P1: &[(&str, &str, &str)] = &[
    ("args_get", "ii", "i"),
    ("args_sizes_get", "ii", "i"),
    ("environ_get", "ii", "i"),
    ("environ_sizes_get", "ii", "i"),
    ("clock_res_get", "ii", "i"),
    ("clock_time_get", "iIi", "i"),
    ("fd_advise", "iIIi", "i"),
    ("fd_allocate", "iII", "i"),
    ("fd_close", "i", "i"),
    ("fd_datasync", "i", "i"),
    ("fd_fdstat_get", "ii", "i"),
    ("fd_fdstat_set_flags", "ii", "i"),
    ("fd_fdstat_set_rights", "iII", "i"),
    ("fd_filestat_get", "ii", "i"),
    ("fd_filestat_set_size", "iI", "i"),
    ("fd_filestat_set_times", "iIIi", "i"),
    ("fd_pread", "iiiIi", "i"),
    ("fd_prestat_get", "ii", "i"),
    ("fd_prestat_dir_name", "iii", "i"),
    ("fd_pwrite", "iiiIi", "i"),
    ("fd_read", "iiii", "i"),
    ("fd_readdir", "iiiIi", "i"),
    ("fd_renumber", "ii", "i"),
    ("fd_seek", "iIii", "i"),
    ("fd_sync", "i", "i"),
    ("fd_tell", "ii", "i"),
    ("fd_write", "iiii", "i"),
    ("path_create_directory", "iii", "i"),
    ("path_filestat_get", "iiiii", "i"),
    ("path_filestat_set_times", "iiiiIIi", "i"),
    ("path_link", "iiiiiii", "i"),
    ("path_open", "iiiiiIIii", "i"),
    ("path_readlink", "iiiiii", "i"),
    ("path_remove_directory", "iii", "i"),
    ("path_rename", "iiiiii", "i"),
    ("path_symlink", "iiiii", "i"),
    ("path_unlink_file", "iii", "i"),
    ("poll_oneoff", "iiii", "i"),
    ("proc_exit", "i", ""),
    ("proc_raise", "i", "i"),
    ("sched_yield", "", "i"),
    ("random_get", "ii", "i"),
    ("sock_accept", "iii", "i"),
    ("sock_recv", "iiiiii", "i"),
    ("sock_send", "iiiii", "i"),
    ("sock_shutdown", "ii", "i"),
];

fn val_types(code: &str) -> Vec<ValType> {
    code.chars()
        .map(|c| if c == 'I' { ValType::I64 } else { ValType::I32 })
        .collect()
}

/// The signature outpost provides for a WASI p1 function, if it is one.
pub fn signature_of(name: &str) -> Option<(Vec<ValType>, Vec<ValType>)> {
    WASI_P1
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, params, results)| (val_types(params), val_types(results)))
}

/// Per-request state behind every host call.
pub struct HostState {
    pub memory: Option<Memory>,
    pub args: Arc<EnvBlock>,
    pub env: Arc<EnvBlock>,
    pub input: GuestInput,
    pub output: GuestOutput,
    pub stderr: StderrBuf,
    pub deadline: Instant,
    /// An inline attempt's slice end (`inline`): a host call still working past it moves the
    /// attempt to a pool thread, as the watchdog does for Wasm code.
    pub slice_end: Option<Instant>,
    pub started: Instant,
    pub handle: Handle,
    /// The app's assets, when its bundle has them.
    pub fs: Option<GuestFs>,
    /// The app's subrequests (`outpost_http_v1`), when it declares backends.
    pub outbound: Option<super::http_v1::Subrequests>,
    scratch: Vec<u8>,
}

impl HostState {
    /// A state with no request in it: a kept store's between requests (`stores`). It holds
    /// nothing of any request, and its output goes nowhere.
    pub fn vacant(args: Arc<EnvBlock>, handle: Handle, deadline: Instant) -> Self {
        Self {
            memory: None,
            args: args.clone(),
            env: args,
            input: GuestInput::fixed(bytes::Bytes::new()),
            output: GuestOutput::detached(),
            stderr: StderrBuf::new(0),
            deadline,
            slice_end: None,
            started: deadline,
            handle,
            fs: None,
            outbound: None,
            scratch: Vec::new(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        args: Arc<EnvBlock>,
        env: Arc<EnvBlock>,
        input: GuestInput,
        output: GuestOutput,
        stderr: StderrBuf,
        deadline: Instant,
        handle: Handle,
    ) -> Self {
        Self {
            memory: None,
            args,
            env,
            input,
            output,
            stderr,
            deadline,
            slice_end: None,
            started: Instant::now(),
            handle,
            fs: None,
            outbound: None,
            scratch: Vec::new(),
        }
    }
}

/// Builds one host function in a request's store.
pub type Constructor = fn(&mut Store, &FunctionEnv<HostState>) -> Function;

type Env<'a> = FunctionEnvMut<'a, HostState>;

fn mem_err<E>(_: E) -> i32 {
    EFAULT
}

fn read_u32(view: &MemoryView, ptr: u64) -> Result<u32, i32> {
    let mut b = [0u8; 4];
    view.read(ptr, &mut b).map_err(mem_err)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(view: &MemoryView, ptr: u64) -> Result<u64, i32> {
    let mut b = [0u8; 8];
    view.read(ptr, &mut b).map_err(mem_err)?;
    Ok(u64::from_le_bytes(b))
}

fn write_u32(view: &MemoryView, ptr: u64, v: u32) -> Result<(), i32> {
    view.write(ptr, &v.to_le_bytes()).map_err(mem_err)
}

fn write_u64(view: &MemoryView, ptr: u64, v: u64) -> Result<(), i32> {
    view.write(ptr, &v.to_le_bytes()).map_err(mem_err)
}

fn errno(r: Result<(), i32>) -> i32 {
    match r {
        Ok(()) => SUCCESS,
        Err(e) => e,
    }
}

/// Run `f` with the guest's memory; EFAULT if the module has none exported.
macro_rules! with_memory {
    ($env:ident, |$state:ident, $view:ident| $body:expr) => {{
        let (state, store) = $env.data_and_store_mut();
        let Some(memory) = state.memory.clone() else {
            return Ok(EFAULT);
        };
        let $view = memory.view(&store);
        let $state = state;
        $body
    }};
}

/// Write a NUL-separated block as `ptrs` (u32 array) + `buf` (the strings).
fn write_block(view: &MemoryView, block: &EnvBlock, ptrs: u32, buf: u32) -> Result<(), i32> {
    view.write(u64::from(buf), &block.bytes).map_err(mem_err)?;
    let mut offset = 0usize;
    for (i, entry) in block.bytes.split_inclusive(|b| *b == 0).enumerate() {
        write_u32(view, u64::from(ptrs) + 4 * i as u64, buf + offset as u32)?;
        offset += entry.len();
    }
    Ok(())
}

/// Which NUL-separated block a call reads.
fn block_of(state: &HostState, args: bool) -> &EnvBlock {
    if args {
        &state.args
    } else {
        &state.env
    }
}

fn block_get(mut env: Env, args: bool, ptrs: i32, buf: i32) -> Result<i32, HostStop> {
    with_memory!(env, |state, view| Ok(errno(write_block(
        &view,
        block_of(state, args),
        ptrs as u32,
        buf as u32
    ))))
}

fn block_sizes_get(mut env: Env, args: bool, count: i32, size: i32) -> Result<i32, HostStop> {
    with_memory!(env, |state, view| {
        let block = block_of(state, args);
        Ok(errno(
            write_u32(&view, count as u32 as u64, block.count)
                .and_then(|_| write_u32(&view, size as u32 as u64, block.bytes.len() as u32)),
        ))
    })
}

fn args_get(env: Env, argv: i32, buf: i32) -> Result<i32, HostStop> {
    block_get(env, true, argv, buf)
}

fn args_sizes_get(env: Env, count: i32, size: i32) -> Result<i32, HostStop> {
    block_sizes_get(env, true, count, size)
}

fn environ_get(env: Env, ptrs: i32, buf: i32) -> Result<i32, HostStop> {
    block_get(env, false, ptrs, buf)
}

fn environ_sizes_get(env: Env, count: i32, size: i32) -> Result<i32, HostStop> {
    block_sizes_get(env, false, count, size)
}

/// Monotonic time is measured from a process-wide origin, so it never goes backwards.
fn monotonic_ns() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn clock_now(id: i32, state: &HostState) -> Option<u64> {
    match id {
        0 => Some(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
        ),
        1 => Some(monotonic_ns()),
        // Process and thread CPU time: the request's own elapsed time.
        2 | 3 => Some(state.started.elapsed().as_nanos() as u64),
        _ => None,
    }
}

fn clock_res_get(mut env: Env, id: i32, res: i32) -> Result<i32, HostStop> {
    with_memory!(env, |_state, view| Ok(if (0..=3).contains(&id) {
        errno(write_u64(&view, res as u32 as u64, 1_000))
    } else {
        EINVAL
    }))
}

fn clock_time_get(mut env: Env, id: i32, _precision: i64, out: i32) -> Result<i32, HostStop> {
    with_memory!(env, |state, view| Ok(match clock_now(id, state) {
        Some(now) => errno(write_u64(&view, out as u32 as u64, now)),
        None => EINVAL,
    }))
}

/// Host calls copy guest data through a scratch buffer of at most this many bytes.
const COPY_CHUNK: usize = 64 * 1024;
/// A host call looping over guest-supplied entries (iovecs, subscriptions) checks the
/// request's deadline once per this many entries.
const ENTRIES_PER_DEADLINE_CHECK: u32 = 1024;

/// Stop a host call whose request is past its deadline, or whose inline attempt is past its
/// slice (the watchdog's interrupt reaches Wasm code only: a host call looping over a guest's
/// iovecs, subscriptions or bytes would hold the async thread until the deadline).
fn check_deadline(state: &HostState) -> Result<(), HostStop> {
    let now = Instant::now();
    if now >= state.deadline {
        return Err(Failure::Limit(Limit::Time).into());
    }
    if state.slice_end.is_some_and(|end| now >= end) && super::inline::must_move() {
        return Err(Failure::Limit(Limit::Time).into());
    }
    Ok(())
}

/// Whether `[ptr, ptr + len)` lies inside the guest's memory: checked before any work, so a
/// bad pointer costs the host nothing.
fn in_bounds(view: &MemoryView, ptr: u64, len: u64) -> bool {
    ptr.checked_add(len)
        .is_some_and(|end| end <= view.data_size())
}

/// An array of `count` entries of `size` bytes at `ptr`, in bounds.
fn array_in_bounds(view: &MemoryView, ptr: i32, count: i32, size: u64) -> bool {
    in_bounds(view, ptr as u32 as u64, count as u32 as u64 * size)
}

/// The `i`th entry of the iovec array at `iovs`: its pointer and length, in bounds.
fn iovec(view: &MemoryView, iovs: i32, i: u32) -> Result<(u64, u64), i32> {
    let at = iovs as u32 as u64 + 8 * u64::from(i);
    let ptr = u64::from(read_u32(view, at)?);
    let len = u64::from(read_u32(view, at + 4)?);
    if !in_bounds(view, ptr, len) {
        return Err(EFAULT);
    }
    Ok((ptr, len))
}

fn fd_write(
    mut env: Env,
    fd: i32,
    iovs: i32,
    iovs_len: i32,
    nwritten: i32,
) -> Result<i32, HostStop> {
    with_memory!(env, |state, view| {
        if !(1..=2).contains(&fd) {
            return Ok(if fd == 0 { ENOTCAPABLE } else { EBADF });
        }
        if !array_in_bounds(&view, iovs, iovs_len, 8) {
            return Ok(EFAULT);
        }
        let mut total: u32 = 0;
        for i in 0..iovs_len as u32 {
            if i % ENTRIES_PER_DEADLINE_CHECK == 0 {
                check_deadline(state)?;
            }
            let (ptr, len) = match iovec(&view, iovs, i) {
                Ok(entry) => entry,
                Err(e) => return Ok(e),
            };
            // Copy only what will be kept: stderr up to its cap, stdout while the response is
            // open (it enforces the head and body caps as bytes arrive).
            let keep = if fd == 1 {
                if state.output.discards() {
                    0
                } else {
                    len
                }
            } else {
                len.min(state.stderr.room() as u64)
            };
            let mut done = 0;
            while done < keep {
                let n = (keep - done).min(COPY_CHUNK as u64) as usize;
                state.scratch.resize(n, 0);
                if view.read(ptr + done, &mut state.scratch).is_err() {
                    return Ok(EFAULT);
                }
                if fd == 1 {
                    state
                        .output
                        .write(&state.scratch, &state.handle, state.deadline)?;
                } else {
                    state.stderr.write(&state.scratch);
                }
                done += n as u64;
                if done < keep {
                    check_deadline(state)?;
                }
            }
            if fd == 2 && keep < len {
                state.stderr.truncated = true;
            }
            total = total.saturating_add(len as u32);
        }
        Ok(errno(write_u32(&view, nwritten as u32 as u64, total)))
    })
}

fn fd_read(mut env: Env, fd: i32, iovs: i32, iovs_len: i32, nread: i32) -> Result<i32, HostStop> {
    with_memory!(env, |state, view| {
        if fd > 2 {
            return fs::read(state, &view, fd, iovs, iovs_len, None, nread);
        }
        if fd != 0 {
            return Ok(ENOTCAPABLE);
        }
        if !array_in_bounds(&view, iovs, iovs_len, 8) {
            return Ok(EFAULT);
        }
        let mut total: u32 = 0;
        for i in 0..iovs_len as u32 {
            if i % ENTRIES_PER_DEADLINE_CHECK == 0 {
                check_deadline(state)?;
            }
            let (ptr, len) = match iovec(&view, iovs, i) {
                Ok(entry) => entry,
                Err(e) => return Ok(e),
            };
            if len == 0 {
                continue;
            }
            // Wait for input only while nothing was read yet in this call.
            if total > 0 && !state.input.ready() {
                break;
            }
            if !state.input.ready() {
                // The guest is about to wait: let the client see what it has written.
                state.output.flush(&state.handle, state.deadline)?;
            }
            let chunk = state
                .input
                .read(len as usize, &state.handle, state.deadline)?;
            if chunk.is_empty() {
                break;
            }
            if view.write(ptr, &chunk).is_err() {
                return Ok(EFAULT);
            }
            total += chunk.len() as u32;
            if chunk.len() < len as usize {
                break;
            }
        }
        Ok(errno(write_u32(&view, nread as u32 as u64, total)))
    })
}

fn fd_fdstat_get(mut env: Env, fd: i32, out: i32) -> Result<i32, HostStop> {
    with_memory!(env, |state, view| {
        if !(0..=2).contains(&fd) {
            return Ok(fs::fdstat(state, &view, fd, out));
        }
        // filetype unknown (a pipe-like stream: guests buffer fully), no flags,
        // rights: fd_read (bit 1) for stdin, fd_write (bit 6) for stdout/stderr.
        let mut stat = [0u8; 24];
        let rights: u64 = if fd == 0 { 1 << 1 } else { 1 << 6 };
        stat[8..16].copy_from_slice(&rights.to_le_bytes());
        Ok(errno(view.write(out as u32 as u64, &stat).map_err(mem_err)))
    })
}

fn fd_close(mut env: Env, fd: i32) -> Result<i32, HostStop> {
    Ok(if (0..=2).contains(&fd) {
        SUCCESS
    } else {
        fs::close(env.data_mut(), fd)
    })
}

fn fd_seek(mut env: Env, fd: i32, offset: i64, whence: i32, out: i32) -> Result<i32, HostStop> {
    if (0..=2).contains(&fd) {
        return Ok(ESPIPE);
    }
    with_memory!(env, |state, view| Ok(fs::seek(
        state, &view, fd, offset, whence, out
    )))
}

fn fd_tell(mut env: Env, fd: i32, out: i32) -> Result<i32, HostStop> {
    if (0..=2).contains(&fd) {
        return Ok(ESPIPE);
    }
    with_memory!(env, |state, view| Ok(fs::tell(state, &view, fd, out)))
}

fn fd_sync(_env: Env, fd: i32) -> Result<i32, HostStop> {
    Ok(if (0..=2).contains(&fd) {
        SUCCESS
    } else {
        EBADF
    })
}

fn random_get(mut env: Env, buf: i32, len: i32) -> Result<i32, HostStop> {
    with_memory!(env, |state, view| {
        let (at, len) = (buf as u32 as u64, len as u32 as u64);
        if !in_bounds(&view, at, len) {
            return Ok(EFAULT);
        }
        let mut done = 0;
        while done < len {
            check_deadline(state)?;
            let n = (len - done).min(COPY_CHUNK as u64) as usize;
            state.scratch.resize(n, 0);
            if getrandom::fill(&mut state.scratch).is_err() {
                return Ok(ENOSYS);
            }
            if view.write(at + done, &state.scratch).is_err() {
                return Ok(EFAULT);
            }
            done += n as u64;
        }
        Ok(SUCCESS)
    })
}

fn sched_yield(_env: Env) -> Result<i32, HostStop> {
    Ok(SUCCESS)
}

fn proc_exit(_env: Env, code: i32) -> Result<(), HostStop> {
    Err(HostStop::Exit(code))
}

const SUBSCRIPTION_BYTES: u64 = 48;
const EVENT_BYTES: u64 = 32;

/// Clock waits sleep (bounded by the deadline, without holding a CPU slot); stdio readiness is
/// reported at once. Events are written straight into the guest's array as they are found:
/// nothing on the host grows with the number of subscriptions.
fn poll_oneoff(
    mut env: Env,
    subs: i32,
    events: i32,
    nsubs: i32,
    nevents: i32,
) -> Result<i32, HostStop> {
    with_memory!(env, |state, view| {
        if nsubs <= 0 {
            return Ok(EINVAL);
        }
        if !array_in_bounds(&view, subs, nsubs, SUBSCRIPTION_BYTES)
            || !array_in_bounds(&view, events, nsubs, EVENT_BYTES)
        {
            return Ok(EFAULT);
        }
        let (subs, events) = (subs as u32 as u64, events as u32 as u64);
        let now = Instant::now();
        let mut ready: u64 = 0;
        let mut earliest: Option<(Instant, u64)> = None;
        for i in 0..nsubs as u32 {
            if i % ENTRIES_PER_DEADLINE_CHECK == 0 {
                check_deadline(state)?;
            }
            let at = subs + u64::from(i) * SUBSCRIPTION_BYTES;
            let (userdata, tag) = match (read_u64(&view, at), read_u32(&view, at + 8)) {
                (Ok(u), Ok(t)) => (u, t as u8),
                _ => return Ok(EFAULT),
            };
            let err = match tag {
                0 => {
                    let (id, timeout, flags) = match (
                        read_u32(&view, at + 16),
                        read_u64(&view, at + 24),
                        read_u32(&view, at + 40),
                    ) {
                        (Ok(id), Ok(t), Ok(f)) => (id as i32, t, f as u16),
                        _ => return Ok(EFAULT),
                    };
                    match clock_now(id, state) {
                        None => EINVAL,
                        Some(clock) => {
                            let wait_ns = if flags & 1 == 1 {
                                timeout.saturating_sub(clock)
                            } else {
                                timeout
                            };
                            let wake = now
                                .checked_add(Duration::from_nanos(wait_ns))
                                .unwrap_or(state.deadline + Duration::from_secs(1));
                            if earliest.is_none_or(|(w, _)| wake < w) {
                                earliest = Some((wake, userdata));
                            }
                            continue;
                        }
                    }
                }
                1 | 2 => {
                    let fd = read_u32(&view, at + 16).unwrap_or(u32::MAX);
                    if fd <= 2 || state.fs.as_ref().is_some_and(|fs| fs.is_open(fd)) {
                        SUCCESS
                    } else {
                        EBADF
                    }
                }
                _ => EINVAL,
            };
            if write_event(&view, events + ready * EVENT_BYTES, userdata, tag, err).is_err() {
                return Ok(EFAULT);
            }
            ready += 1;
        }
        if ready == 0 {
            if let Some((wake, userdata)) = earliest {
                // An inline attempt never sleeps: it moves to a pool thread instead.
                if super::inline::must_move() {
                    return Err(Failure::Limit(Limit::Time).into());
                }
                state.output.flush(&state.handle, state.deadline)?;
                let until = wake.min(state.deadline);
                let slept = scheduler::blocking(state.deadline, || {
                    let left = until.saturating_duration_since(Instant::now());
                    if !left.is_zero() {
                        std::thread::sleep(left);
                    }
                });
                if slept.is_err() || wake > state.deadline {
                    return Err(Failure::Limit(Limit::Time).into());
                }
                if write_event(&view, events, userdata, 0, SUCCESS).is_err() {
                    return Ok(EFAULT);
                }
                ready = 1;
            }
        }
        Ok(errno(write_u32(&view, nevents as u32 as u64, ready as u32)))
    })
}

fn write_event(view: &MemoryView, at: u64, userdata: u64, tag: u8, err: i32) -> Result<(), i32> {
    let mut event = [0u8; EVENT_BYTES as usize];
    event[0..8].copy_from_slice(&userdata.to_le_bytes());
    event[8..10].copy_from_slice(&(err as u16).to_le_bytes());
    event[10] = tag;
    view.write(at, &event).map_err(mem_err)
}

/// The constructor for a WASI p1 function by name.
pub fn constructor(name: &str) -> Option<Constructor> {
    macro_rules! typed {
        ($f:expr) => {
            Some(|store: &mut Store, env: &FunctionEnv<HostState>| {
                Function::new_typed_with_env(store, env, $f)
            })
        };
    }
    // Calls that write files or directories, and sockets: there are none.
    macro_rules! errno_stub {
        ($errno:expr, $($arg:ty),*) => {
            typed!(|_: Env, $(_: $arg),*| -> i32 { $errno })
        };
    }
    match name {
        "args_get" => typed!(args_get),
        "args_sizes_get" => typed!(args_sizes_get),
        "environ_get" => typed!(environ_get),
        "environ_sizes_get" => typed!(environ_sizes_get),
        "clock_res_get" => typed!(clock_res_get),
        "clock_time_get" => typed!(clock_time_get),
        "fd_write" => typed!(fd_write),
        "fd_read" => typed!(fd_read),
        "fd_fdstat_get" => typed!(fd_fdstat_get),
        "fd_close" => typed!(fd_close),
        "fd_seek" => typed!(fd_seek),
        "fd_tell" => typed!(fd_tell),
        "fd_sync" | "fd_datasync" => typed!(fd_sync),
        "fd_prestat_get" => typed!(fs::fd_prestat_get),
        "fd_prestat_dir_name" => typed!(fs::fd_prestat_dir_name),
        "random_get" => typed!(random_get),
        "sched_yield" => typed!(sched_yield),
        "proc_exit" => typed!(proc_exit),
        "poll_oneoff" => typed!(poll_oneoff),
        "proc_raise" => errno_stub!(ENOSYS, i32),
        "fd_advise" => typed!(fs::fd_advise),
        "fd_allocate" => errno_stub!(EBADF, i32, i64, i64),
        "fd_fdstat_set_flags" => errno_stub!(ENOTSUP, i32, i32),
        "fd_fdstat_set_rights" => errno_stub!(ENOTSUP, i32, i64, i64),
        "fd_filestat_get" => typed!(fs::fd_filestat_get),
        "fd_filestat_set_size" => errno_stub!(EBADF, i32, i64),
        "fd_filestat_set_times" => errno_stub!(EBADF, i32, i64, i64, i32),
        "fd_pread" => typed!(fs::fd_pread),
        "fd_pwrite" => errno_stub!(EBADF, i32, i32, i32, i64, i32),
        "fd_readdir" => typed!(fs::fd_readdir),
        "fd_renumber" => errno_stub!(EBADF, i32, i32),
        "path_create_directory" => errno_stub!(EBADF, i32, i32, i32),
        "path_filestat_get" => typed!(fs::path_filestat_get),
        "path_filestat_set_times" => errno_stub!(EBADF, i32, i32, i32, i32, i64, i64, i32),
        "path_link" => errno_stub!(EBADF, i32, i32, i32, i32, i32, i32, i32),
        "path_open" => typed!(fs::path_open),
        "path_readlink" => errno_stub!(EBADF, i32, i32, i32, i32, i32, i32),
        "path_remove_directory" => errno_stub!(EBADF, i32, i32, i32),
        "path_rename" => errno_stub!(EBADF, i32, i32, i32, i32, i32, i32),
        "path_symlink" => errno_stub!(EBADF, i32, i32, i32, i32, i32),
        "path_unlink_file" => errno_stub!(EBADF, i32, i32, i32),
        "sock_accept" => errno_stub!(ENOTSUP, i32, i32, i32),
        "sock_recv" => errno_stub!(ENOTSUP, i32, i32, i32, i32, i32, i32),
        "sock_send" => errno_stub!(ENOTSUP, i32, i32, i32, i32, i32),
        "sock_shutdown" => errno_stub!(ENOTSUP, i32, i32),
        _ => None,
    }
}

// After the helpers and macros above, which it uses.
mod fs;
pub use fs::GuestFs;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_function_is_built_with_its_listed_signature() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let mut store = Store::default();
        let (output, _rx) = GuestOutput::new(1);
        let state = HostState::new(
            Arc::new(EnvBlock::default()),
            Arc::new(EnvBlock::default()),
            GuestInput::fixed(bytes::Bytes::new()),
            output,
            StderrBuf::new(0),
            Instant::now(),
            rt.handle().clone(),
        );
        let env = FunctionEnv::new(&mut store, state);
        for (name, params, results) in WASI_P1 {
            let ctor = constructor(name).unwrap_or_else(|| panic!("{name} has no constructor"));
            let ty = ctor(&mut store, &env).ty(&store);
            let code = |tys: &[wasmer::Type]| -> String {
                tys.iter()
                    .map(|t| if *t == wasmer::Type::I64 { 'I' } else { 'i' })
                    .collect()
            };
            assert_eq!(code(ty.params()), *params, "{name} params");
            assert_eq!(code(ty.results()), *results, "{name} results");
        }
    }
}
