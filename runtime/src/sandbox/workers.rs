//! The worker pool Wasm runs on: a fixed set of OS threads sized to the cores, fed by a queue,
//! so guest code never runs on (or blocks) the async I/O threads.

type Job = Box<dyn FnOnce() + Send + 'static>;

pub struct Workers {
    tx: crossbeam_channel::Sender<Job>,
    size: usize,
}

impl Workers {
    pub fn start(size: usize) -> std::io::Result<Self> {
        let size = size.max(1);
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        for i in 0..size {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("outpost-worker-{i}"))
                .spawn(move || {
                    for job in rx.iter() {
                        // A bug in one request must not shrink the pool.
                        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                        if ran.is_err() {
                            tracing::error!("a request panicked on a worker; the worker goes on");
                        }
                    }
                })?;
        }
        Ok(Self { tx, size })
    }

    /// Queue a job; false if the pool is shut down.
    pub fn submit(&self, job: impl FnOnce() + Send + 'static) -> bool {
        self.tx.send(Box::new(job)).is_ok()
    }

    pub fn size(&self) -> usize {
        self.size
    }
}
