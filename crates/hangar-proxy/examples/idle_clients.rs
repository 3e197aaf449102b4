//! Opens N keep-alive connections to a proxy, sends one request on each, then holds them idle
//! until stdin closes; prints `ready` once every connection got its response.
//!
//! `cargo run --release -p hangar-proxy --example idle_clients -- 127.0.0.1:18081 10000`

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18081".to_owned());
    let count: usize = args.next().map_or(Ok(10_000), |n| n.parse())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut held = Vec::with_capacity(count);
        let mut buf = vec![0u8; 4096];
        for _ in 0..count {
            let mut stream = tokio::net::TcpStream::connect(&addr).await?;
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: bench.localhost\r\n\r\n")
                .await?;
            // The benchmark body is 6 bytes, so one read holds the whole response.
            let n = stream.read(&mut buf).await?;
            anyhow::ensure!(n > 0, "the proxy closed a connection");
            held.push(stream);
        }
        println!("ready {}", held.len());
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
        let mut line = String::new();
        let _ = stdin.read_line(&mut line).await;
        drop(held);
        Ok(())
    })
}
