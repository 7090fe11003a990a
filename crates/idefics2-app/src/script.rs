//! A scripted session, for the window and browser tests and for demos: once the model is ready,
//! attach images and ask (through the same calls as the composer), wait for the whole answer,
//! press Regenerate (a second answer, now with compiled shaders), then report both (a JSON file
//! natively, the page's `#result` element in the browser), take a screenshot of the rendered
//! window and, if asked, close.

use std::sync::{Arc, Mutex};

use crate::app::ChatApp;

#[derive(Default)]
pub struct Script {
    /// (name, file bytes) of the images to attach.
    pub images: Vec<(String, Vec<u8>)>,
    pub question: String,
    /// Native: where to write the screenshot (PNG) and the report (JSON).
    pub screenshot: Option<std::path::PathBuf>,
    pub report: Option<std::path::PathBuf>,
    /// Close the window when done.
    pub exit: bool,
    state: State,
}

#[derive(Default)]
enum State {
    #[default]
    WaitingForModel,
    Answering,
    /// The first answer came; Regenerate asks again (now with warm shaders: the speed of a
    /// second answer). Holds the first answer's report.
    Regenerating(serde_json::Value),
    /// A few frames so the final answer is drawn before the screenshot.
    Settling(u32, serde_json::Value),
    Shooting(Arc<Mutex<Option<Arc<egui::ColorImage>>>>, serde_json::Value),
    Done,
}

impl Script {
    pub fn new(images: Vec<(String, Vec<u8>)>, question: impl Into<String>) -> Self {
        Self {
            images,
            question: question.into(),
            ..Self::default()
        }
    }

    pub fn step(&mut self, app: &mut ChatApp, ctx: &egui::Context) {
        if !matches!(
            self.state,
            State::Done | State::Settling(..) | State::Shooting(..)
        ) && let Some(error) = app.errors().first()
        {
            let report = serde_json::json!({ "error": error });
            self.state = State::Settling(3, report);
        }
        match &mut self.state {
            State::WaitingForModel if app.model_ready() => {
                for (name, bytes) in std::mem::take(&mut self.images) {
                    app.add_image_bytes(ctx, &name, &bytes);
                }
                app.set_composer_text(&self.question);
                app.send();
                self.state = State::Answering;
            }
            State::WaitingForModel | State::Done => {}
            State::Answering => {
                if let Some(first) = answer_report(app) {
                    app.regenerate();
                    self.state = State::Regenerating(first);
                }
            }
            State::Regenerating(first) => {
                if let Some(mut report) = answer_report(app) {
                    report["first"] = first.take();
                    report["adapter"] = app.gpu.as_ref().map(|g| g.label.clone()).into();
                    self.state = State::Settling(3, report);
                }
            }
            State::Settling(frames, report) => {
                if *frames > 0 {
                    *frames -= 1;
                } else if cfg!(target_family = "wasm") {
                    // The page's driver (playwright) screenshots the browser window itself.
                    let report = report.take();
                    self.finish(ctx, None, &report);
                    self.state = State::Done;
                } else {
                    let shot = Arc::new(Mutex::new(None));
                    let target = shot.clone();
                    let repaint = ctx.clone();
                    ctx.request_screenshot(move |image| {
                        if let Ok(mut slot) = target.lock() {
                            *slot = Some(image);
                        }
                        repaint.request_repaint();
                    });
                    self.state = State::Shooting(shot, report.take());
                }
            }
            State::Shooting(shot, report) => {
                let image = shot.lock().ok().and_then(|mut s| s.take());
                if let Some(image) = image {
                    let report = report.take();
                    self.finish(ctx, Some(&image), &report);
                    self.state = State::Done;
                }
            }
        }
        // Keep frames coming while waiting for the model, the answer or the screenshot.
        if !matches!(self.state, State::Done) {
            ctx.request_repaint_after(std::time::Duration::from_millis(50));
        }
    }

    fn finish(
        &self,
        ctx: &egui::Context,
        image: Option<&egui::ColorImage>,
        report: &serde_json::Value,
    ) {
        let text = report.to_string();
        println!("{text}");
        #[cfg(not(target_family = "wasm"))]
        {
            if let (Some(path), Some(image)) = (&self.screenshot, image) {
                let [w, h] = image.size;
                let rgba: Vec<u8> = image.pixels.iter().flat_map(|c| c.to_array()).collect();
                let saved =
                    image::RgbaImage::from_raw(w as u32, h as u32, rgba).map(|img| img.save(path));
                if !matches!(saved, Some(Ok(()))) {
                    eprintln!("cannot save the screenshot to {}", path.display());
                }
            }
            if let Some(path) = &self.report
                && let Err(e) = std::fs::write(path, &text)
            {
                eprintln!("cannot write {}: {e}", path.display());
            }
        }
        #[cfg(target_family = "wasm")]
        {
            let _ = image;
            crate::web::report(&text);
        }
        if self.exit {
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
        }
    }
}

/// The last answer and its figures, once it is complete.
fn answer_report(app: &ChatApp) -> Option<serde_json::Value> {
    let answer = app.last_answer()?;
    let stats = app.last_stats();
    let (ids, logprobs) = app.last_tokens();
    Some(serde_json::json!({
        "answer": answer,
        "ids": ids,
        "logprobs": logprobs,
        "prompt_tokens": stats.map(|s| s.prompt_tokens),
        "new_tokens": stats.map(|s| s.new_tokens),
        "tokens_per_second": stats.map(|s| s.tokens_per_second),
        "time_to_first_token": stats.map(|s| s.time_to_first_token),
    }))
}
