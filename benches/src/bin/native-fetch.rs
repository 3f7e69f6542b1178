//! The comparison point for the subrequest benchmark: a native hyper-util client (pooled,
//! keep-alive, the same client type outpost's backends use) sending N sequential GETs to an
//! origin. Prints the mean microseconds per request over the last N - 1 (the first one
//! connects). `native-fetch URL N`
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url: hyper::Uri = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:19080/small.txt".into())
        .parse()?;
    let n: u32 = args.next().unwrap_or_else(|| "1000".into()).parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let mut first = None;
        let started = std::time::Instant::now();
        for i in 0..n.max(2) {
            let resp = client.get(url.clone()).await?;
            anyhow::ensure!(resp.status() == 200, "status {}", resp.status());
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::ensure!(!body.is_empty(), "empty body");
            if i == 0 {
                first = Some(started.elapsed());
            }
        }
        let rest = started.elapsed() - first.unwrap_or_default();
        println!("{:.1}", rest.as_secs_f64() * 1e6 / f64::from(n.max(2) - 1));
        Ok(())
    })
}
