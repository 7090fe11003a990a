//! Runs the [`Engine`] off the UI thread: a thread of its own natively; in the browser, async
//! tasks on the page's event loop (the model yields at every GPU read, so the UI keeps drawing).
//! Events come back through a channel, and each one asks egui for a repaint.

use std::sync::mpsc;

use crate::engine::{CancelFlag, Command, Engine, Event};

pub struct Worker {
    #[cfg(not(target_family = "wasm"))]
    commands: mpsc::Sender<Command>,
    #[cfg(target_family = "wasm")]
    engine: std::rc::Rc<std::cell::RefCell<Engine>>,
    #[cfg(target_family = "wasm")]
    ctx: egui::Context,
    events_tx: mpsc::Sender<Event>,
    events: mpsc::Receiver<Event>,
    /// Stop / Cancel: read by the engine between tokens and between tensors.
    pub cancel: CancelFlag,
}

fn emitter(events: mpsc::Sender<Event>, ctx: egui::Context) -> impl Fn(Event) {
    move |event| {
        // The UI may be gone when the app closes mid-answer; nothing is left to tell then.
        let _ = events.send(event);
        ctx.request_repaint();
    }
}

impl Worker {
    #[cfg(not(target_family = "wasm"))]
    pub fn start(ctx: egui::Context) -> Self {
        let (commands, inbox) = mpsc::channel::<Command>();
        let (events_tx, events) = mpsc::channel();
        let cancel = CancelFlag::default();
        let (emit_tx, thread_cancel) = (events_tx.clone(), cancel.clone());
        std::thread::Builder::new()
            .name("idefics2-engine".into())
            .spawn(move || {
                let emit = emitter(emit_tx, ctx);
                let mut engine = Engine::default();
                while let Ok(command) = inbox.recv() {
                    let is_load = matches!(command, Command::Load(_));
                    // A GPU failure that burn reports by panicking (out of memory, device lost)
                    // becomes a message; the window and the chat stay.
                    let run = || {
                        futures_lite::future::block_on(engine.run(command, &thread_cancel, &emit))
                    };
                    if let Err(panic) = idefics2::catch_panics(run) {
                        let message =
                            format!("the model failed: {}", idefics2::panic_text(&*panic));
                        emit(if is_load {
                            Event::LoadFailed(message)
                        } else {
                            Event::Failed(message)
                        });
                    }
                }
            })
            .expect("spawning the engine thread");
        Self {
            commands,
            events_tx,
            events,
            cancel,
        }
    }

    #[cfg(target_family = "wasm")]
    pub fn start(ctx: egui::Context) -> Self {
        let (events_tx, events) = mpsc::channel();
        Self {
            engine: Default::default(),
            ctx,
            events_tx,
            events,
            cancel: CancelFlag::default(),
        }
    }

    /// Starts `command`; the UI sends one at a time (it waits for the previous one's last event).
    pub fn send(&self, command: Command) {
        self.cancel.reset();
        #[cfg(not(target_family = "wasm"))]
        if self.commands.send(command).is_err() {
            let _ = self
                .events_tx
                .send(Event::Failed("the model thread has stopped".into()));
        }
        #[cfg(target_family = "wasm")]
        {
            let (engine, cancel) = (self.engine.clone(), self.cancel.clone());
            let emit = emitter(self.events_tx.clone(), self.ctx.clone());
            wasm_bindgen_futures::spawn_local(async move {
                let Ok(mut engine) = engine.try_borrow_mut() else {
                    emit(Event::Failed("the model is busy".into()));
                    return;
                };
                engine.run(command, &cancel, &emit).await;
            });
        }
    }

    pub fn poll(&self) -> Vec<Event> {
        self.events.try_iter().collect()
    }
}
