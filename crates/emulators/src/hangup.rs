//! Serving each connection on its own, so that a handler can close its request's connection
//! without an answer: the fault of a provider that applied a request and was never heard
//! from again (the caller cannot tell whether it happened).

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// Given to every request as an extension: [`Hangup::now`] closes its connection.
#[derive(Clone, Default)]
pub(crate) struct Hangup(Arc<Notify>);

impl Hangup {
    /// Closes the connection this request came on, without an answer; never returns.
    pub(crate) async fn now(&self) {
        self.0.notify_one();
        std::future::pending::<()>().await;
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, each connection on its own task
/// with its own [`Hangup`].
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => r?,
            () = &mut shutdown => return Ok(()),
        };
        let hangup = Hangup::default();
        let app = app.clone().layer(axum::Extension(hangup.clone()));
        tokio::spawn(async move {
            let service = hyper_util::service::TowerToHyperService::new(app);
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                () = hangup.0.notified() => {} // dropping `conn` closes the socket
            }
        });
    }
}
