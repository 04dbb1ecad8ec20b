//! The HTTPS server of the admission webhook.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use kube::api::DynamicObject;
use kube::core::admission::AdmissionReview;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::admission;
use super::certs::CurrentCert;
use crate::metrics::Metrics;
use crate::watch::Stores;

/// Serves `/mutate` over TLS with the current certificate until the process ends.
pub async fn serve(
    listener: TcpListener,
    current: Arc<CurrentCert>,
    stores: Arc<Stores>,
    metrics: Metrics,
) {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("the default protocol versions are supported")
    .with_no_client_auth()
    .with_cert_resolver(current);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "Failed to accept a webhook connection");
                continue;
            }
        };
        let (acceptor, stores, metrics) = (acceptor.clone(), stores.clone(), metrics.clone());
        tokio::spawn(async move {
            let stream = match acceptor.accept(stream).await {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::debug!(%error, %peer, "Webhook TLS handshake failed");
                    return;
                }
            };
            let service = service_fn(move |request| {
                let (stores, metrics) = (stores.clone(), metrics.clone());
                async move {
                    Ok::<_, std::convert::Infallible>(handle(request, &stores, &metrics).await)
                }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, %peer, "Webhook connection ended with an error");
            }
        });
    }
}

pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

async fn handle(
    request: Request<Incoming>,
    stores: &Stores,
    metrics: &Metrics,
) -> Response<Full<Bytes>> {
    if request.method() != Method::POST || request.uri().path() != "/mutate" {
        return respond(StatusCode::NOT_FOUND, Bytes::from_static(b"not found"));
    }
    let started = Instant::now();
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) => return respond(StatusCode::BAD_REQUEST, Bytes::from(error.to_string())),
    };
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(&body) {
        Ok(review) => review,
        Err(error) => {
            metrics.observe_admission("unknown", "error", started.elapsed());
            return respond(
                StatusCode::BAD_REQUEST,
                Bytes::from(format!("invalid AdmissionReview: {error}")),
            );
        }
    };
    let (answer, outcome, kind) = admission::review(stores, review);
    tracing::debug!(
        ?kind,
        outcome = outcome.as_str(),
        "Answered an admission request"
    );
    metrics.observe_admission(
        kind.map(|kind| kind.as_str()).unwrap_or("other"),
        outcome.as_str(),
        started.elapsed(),
    );
    match serde_json::to_vec(&answer) {
        Ok(bytes) => respond(StatusCode::OK, Bytes::from(bytes)),
        Err(error) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            Bytes::from(error.to_string()),
        ),
    }
}

fn respond(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(body))
        .expect("static response parts are valid")
}
