//! The shutdown signal a binary passes to its servers. Tests pass their own futures instead.

use std::future::Future;

/// Completes on SIGTERM (what Kubernetes sends) or Ctrl-C. The handlers are installed when this
/// is called, not when the future is first polled, so a signal that arrives in between is not
/// lost (it would otherwise kill the process with the default action).
pub fn signal() -> impl Future<Output = ()> + Send {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let terminate = signal(SignalKind::terminate());
        let interrupt = signal(SignalKind::interrupt());
        async move {
            let wait = |s: std::io::Result<tokio::signal::unix::Signal>| async move {
                match s {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = wait(terminate) => tracing::info!("SIGTERM received, shutting down"),
                _ = wait(interrupt) => tracing::info!("Ctrl-C received, shutting down"),
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("Ctrl-C received, shutting down");
    }
}
