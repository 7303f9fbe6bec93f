//! A server's background thread and runtime.

use std::future::Future;
use std::io;
use std::thread::JoinHandle;

use tokio::runtime::Runtime;
use tokio::sync::oneshot;

/// Owns a thread that drives one server's runtime until shut down.
#[derive(Debug)]
pub(crate) struct Background {
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// A fresh single-threaded runtime. Sockets must be registered with it (via
/// `runtime.enter()`) before [`Background::spawn`] moves it to its thread.
pub(crate) fn runtime() -> io::Result<Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

impl Background {
    /// Runs `serve` on `runtime` in a new thread until [`Background::stop`]
    /// or drop. Dropping the runtime afterwards cancels every task the server
    /// spawned and closes their sockets.
    pub(crate) fn spawn<F>(name: String, runtime: Runtime, serve: F) -> io::Result<Self>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            runtime.block_on(async move {
                tokio::select! {
                    () = serve => {}
                    _ = rx => {}
                }
            });
            drop(runtime);
        })?;
        Ok(Self {
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// Signals shutdown and waits for the thread to finish.
    pub(crate) fn stop(&mut self) {
        drop(self.shutdown.take());
        if let Some(thread) = self.thread.take() {
            // A panic on the server thread has already been reported on
            // stderr; nothing more to do with it here.
            let _ = thread.join();
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop();
    }
}
