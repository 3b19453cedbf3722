//! Forwarding one proxy stream to the endpoint's upstream.
//!
//! By default bytes are copied both ways without parsing (the edge already parsed HTTP), with
//! half-close passed through. Only a `Host` rewrite needs HTTP parsing here; then hyper serves
//! the stream and a hyper client talks to the upstream.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use warren_mux::Stream;
use warren_proto::{ProxyHeader, error_codes as codes};

use crate::config::{EndpointConfig, EndpointProto, UpstreamScheme};

/// Copy buffer per direction.
const COPY_BUF: usize = 64 * 1024;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub(crate) async fn forward(mut stream: Stream, header: &ProxyHeader, ep: &EndpointConfig) {
    let upstream = match dial(ep).await {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(upstream = %ep.upstream, error = %e, "upstream unreachable");
            if matches!(ep.proto, EndpointProto::Http | EndpointProto::Https) {
                let _ = stream.write_all(bad_gateway(ep, &e).as_bytes()).await;
                let _ = stream.shutdown().await;
                // Let the edge read the response before the stream goes away.
                let mut sink = tokio::io::sink();
                let _ = tokio::io::copy(&mut stream, &mut sink).await;
            }
            return;
        }
    };
    tracing::debug!(visitor = %header.client_addr, upstream = %ep.upstream, "proxying");
    match (&ep.host_header, ep.proto) {
        (Some(host), EndpointProto::Http | EndpointProto::Https) => {
            let host = if host == "rewrite" {
                format!("{}:{}", ep.upstream.host, ep.upstream.port)
            } else {
                host.clone()
            };
            proxy_http(stream, upstream, host).await;
        }
        (_, EndpointProto::Tls) if ep.tls_termination.is_some() => {
            let cfg = ep.tls_termination.clone().expect("checked");
            let accept = tokio_rustls::TlsAcceptor::from(cfg).accept(stream);
            match tokio::time::timeout(std::time::Duration::from_secs(10), accept).await {
                Ok(Ok(mut tls)) => {
                    let mut upstream = upstream;
                    if let Err(e) =
                        tokio::io::copy_bidirectional_with_sizes(&mut tls, &mut upstream, COPY_BUF, COPY_BUF)
                            .await
                    {
                        tracing::debug!(error = %e, "tls stream ended with an error");
                    }
                }
                Ok(Err(e)) => {
                    tracing::info!(visitor = %header.client_addr, error = %e, "visitor TLS handshake failed")
                }
                Err(_) => tracing::info!(visitor = %header.client_addr, "visitor TLS handshake timed out"),
            }
        }
        _ => {
            let mut upstream = upstream;
            if let Err(e) =
                tokio::io::copy_bidirectional_with_sizes(&mut stream, &mut upstream, COPY_BUF, COPY_BUF).await
            {
                tracing::debug!(error = %e, "proxy stream ended with an error");
            }
        }
    }
}

async fn dial(ep: &EndpointConfig) -> Result<Box<dyn Io>, String> {
    let u = &ep.upstream;
    let tcp = TcpStream::connect((u.host.as_str(), u.port))
        .await
        .map_err(|e| format!("cannot connect to {u}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    if u.scheme != UpstreamScheme::Https {
        return Ok(Box::new(tcp));
    }
    let name = rustls::pki_types::ServerName::try_from(u.host.clone())
        .map_err(|_| format!("invalid upstream host {}", u.host))?;
    let tls = tokio_rustls::TlsConnector::from(crate::tls::upstream_config(ep.verify_upstream_tls()))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS to {u} failed: {e}"))?;
    Ok(Box::new(tls))
}

fn bad_gateway(ep: &EndpointConfig, err: &str) -> String {
    let body = format!(
        "The endpoint is online but the agent could not reach its upstream {}.\n{err}\nMake sure the service is running and listening there.\n\n{}\n",
        ep.upstream,
        codes::UPSTREAM_UNREACHABLE
    );
    format!(
        "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain; charset=utf-8\r\nwarren-error-code: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        codes::UPSTREAM_UNREACHABLE,
        body.len()
    )
}

/// Serves HTTP on the proxy stream, rewriting `Host`, over one upstream connection.
async fn proxy_http(stream: Stream, upstream: Box<dyn Io>, host: String) {
    let Ok(host) = HeaderValue::from_str(&host) else { return };
    let (sender, conn) =
        match hyper::client::conn::http1::Builder::new().handshake(TokioIo::new(upstream)).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "upstream HTTP handshake failed");
                return;
            }
        };
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let svc = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        let (sender, host) = (sender.clone(), host.clone());
        async move {
            req.headers_mut().insert(header::HOST, host);
            let mut s = sender.lock().await;
            s.ready().await?;
            s.send_request(req).await
        }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades()
        .await
    {
        tracing::debug!(error = %e, "proxy stream HTTP ended with an error");
    }
}
