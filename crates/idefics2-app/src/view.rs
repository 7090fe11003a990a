//! Drawing the window and taking the user's input: top bar (model), settings panel, chat history,
//! composer, status line; dropped, pasted and picked files.

use crate::app::{ChatApp, ModelState};
use crate::attachment::Attachment;
use crate::conversation::Role;
use crate::engine::ModelSource;

const THUMB_HEIGHT: f32 = 72.0;

impl eframe::App for ChatApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        self.handle_events(&ctx);
        self.take_dropped_and_pasted(&ctx);
        if let Some(mut script) = self.script.take() {
            script.step(self, &ctx);
            self.script = Some(script);
        }
        egui::Panel::top("model").show(ui, |ui| self.model_bar(ui));
        egui::Panel::bottom("status").show(ui, |ui| self.status_line(ui));
        egui::Panel::right("settings")
            .default_size(280.0)
            .show(ui, |ui| {
                egui::ScrollArea::vertical().show(ui, |ui| {
                    let can_reload = !self.busy() && self.source.is_some();
                    let info = match &self.model {
                        ModelState::Ready(info) => Some(info),
                        _ => None,
                    };
                    if self.settings.ui(ui, info, can_reload)
                        && let Some(source) = self.source.clone()
                    {
                        self.load(source);
                    }
                });
            });
        egui::Panel::bottom("composer").show(ui, |ui| self.composer(ui));
        egui::CentralPanel::default().show(ui, |ui| {
            self.error_messages(ui);
            self.history(ui);
        });
    }
}

impl ChatApp {
    fn model_bar(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            ui.strong("Idefics2");
            #[cfg(not(target_family = "wasm"))]
            if ui
                .add_enabled(!self.busy(), egui::Button::new("Open model folder…"))
                .clicked()
                && let Some(dir) = rfd::FileDialog::new().pick_folder()
            {
                self.load(ModelSource::Dir(dir));
            }
            #[cfg(target_family = "wasm")]
            {
                if ui
                    .add_enabled(!self.busy(), egui::Button::new("Choose model files…"))
                    .on_hover_text("All files of a model directory (config.json, *.safetensors, tokenizer.json, …)")
                    .clicked()
                {
                    crate::web::pick_model_files(self.files_tx.clone(), ui.ctx().clone());
                }
                ui.add(
                    egui::TextEdit::singleline(&mut self.url)
                        .hint_text("URL of a model directory")
                        .desired_width(220.0),
                );
                if ui
                    .add_enabled(!self.busy() && !self.url.trim().is_empty(), egui::Button::new("Load"))
                    .clicked()
                {
                    self.load(ModelSource::Url(self.url.trim().to_owned()));
                }
            }
            if ui
                .add_enabled(!self.busy(), egui::Button::new("New chat"))
                .clicked()
            {
                self.chat.turns.clear();
            }
            match &self.model {
                ModelState::None => {
                    ui.label("no model loaded");
                }
                ModelState::Ready(info) => {
                    ui.label(format!("model: {}", info.label));
                }
                ModelState::Loading { label, stage, done } => {
                    let fraction = if done.total_bytes > 0 {
                        done.bytes as f32 / done.total_bytes as f32
                    } else {
                        0.0
                    };
                    let totals = if done.total_tensors > 0 {
                        format!(
                            "{stage} {label}: {}/{} tensors, {} / {}",
                            done.tensors,
                            done.total_tensors,
                            megabytes(done.bytes),
                            megabytes(done.total_bytes)
                        )
                    } else {
                        format!("{stage} {label}: {} files, {}", done.tensors, megabytes(done.bytes))
                    };
                    ui.add(
                        egui::ProgressBar::new(fraction)
                            .text(totals)
                            .desired_width(360.0),
                    );
                    if ui.button("Cancel").clicked() {
                        self.worker.cancel.cancel();
                    }
                }
            }
        });
    }

    fn status_line(&self, ui: &mut egui::Ui) {
        ui.horizontal_wrapped(|ui| {
            let adapter = self
                .gpu
                .as_ref()
                .map_or("no GPU adapter", |g| g.label.as_str());
            ui.label(format!("adapter: {adapter}"));
            ui.separator();
            match &self.model {
                ModelState::Ready(info) => {
                    ui.label(format!(
                        "{} on {} ({:?}, {})",
                        info.label, info.device_label, info.precision, info.quant
                    ));
                    ui.separator();
                    let context = self
                        .last_stats
                        .map_or(0, |s| s.prompt_tokens + s.new_tokens);
                    ui.label(format!(
                        "memory: {} weights + {} KV cache",
                        megabytes(info.weight_bytes),
                        megabytes(context * info.kv_bytes_per_token)
                    ));
                }
                _ => {
                    ui.label("no model");
                }
            }
            ui.separator();
            if let Some(p) = &self.pending {
                if let Some(tokens) = p.prompt_tokens {
                    ui.label(format!("prompt: {tokens} tokens"));
                }
                ui.label(format!(
                    "answering… {:.1} s",
                    p.started.elapsed().as_secs_f32()
                ));
            } else if let Some(stats) = &self.last_stats {
                ui.label(format!(
                    "prompt: {} tokens | {:.1} tok/s | first token after {:.2} s{}",
                    stats.prompt_tokens,
                    stats.tokens_per_second,
                    stats.time_to_first_token,
                    if stats.cancelled { " | stopped" } else { "" }
                ));
            }
        });
    }

    fn error_messages(&mut self, ui: &mut egui::Ui) {
        let mut dismissed = None;
        for (i, error) in self.errors.iter().enumerate() {
            egui::Frame::group(ui.style())
                .fill(ui.visuals().error_fg_color.gamma_multiply(0.15))
                .show(ui, |ui| {
                    ui.horizontal(|ui| {
                        ui.colored_label(ui.visuals().error_fg_color, error);
                        if ui.small_button("✕").clicked() {
                            dismissed = Some(i);
                        }
                    });
                });
        }
        if let Some(i) = dismissed {
            self.errors.remove(i);
        }
    }

    fn history(&mut self, ui: &mut egui::Ui) {
        let mut regenerate = false;
        let last_answer = self
            .chat
            .turns
            .iter()
            .rposition(|t| t.role == Role::Assistant);
        egui::ScrollArea::vertical()
            .stick_to_bottom(true)
            .auto_shrink([false, false])
            .show(ui, |ui| {
                if self.chat.turns.is_empty() && self.pending.is_none() {
                    ui.weak("Drop images here (or paste, or use Add images…), type a question, press Enter.");
                }
                for (i, turn) in self.chat.turns.iter().enumerate() {
                    egui::Frame::group(ui.style()).show(ui, |ui| {
                        ui.set_width(ui.available_width());
                        ui.horizontal(|ui| {
                            ui.strong(match turn.role {
                                Role::User => "You",
                                Role::Assistant => "Idefics2",
                            });
                            if turn.role == Role::Assistant {
                                if ui.small_button("Copy").clicked() {
                                    ui.ctx().copy_text(turn.text.clone());
                                }
                                if Some(i) == last_answer
                                    && self.pending.is_none()
                                    && ui.small_button("Regenerate").clicked()
                                {
                                    regenerate = true;
                                }
                            }
                        });
                        if !turn.images.is_empty() {
                            ui.horizontal_wrapped(|ui| {
                                for image in &turn.images {
                                    image.show(ui, THUMB_HEIGHT * 1.5);
                                }
                            });
                        }
                        ui.add(egui::Label::new(&turn.text).selectable(true));
                    });
                }
                if let Some(p) = &self.pending {
                    egui::Frame::group(ui.style()).show(ui, |ui| {
                        ui.set_width(ui.available_width());
                        ui.horizontal(|ui| {
                            ui.strong("Idefics2");
                            ui.spinner();
                        });
                        ui.label(&p.text);
                    });
                }
            });
        if regenerate {
            self.regenerate();
        }
    }

    fn composer(&mut self, ui: &mut egui::Ui) {
        ui.add_space(4.0);
        if !self.composer_images.is_empty() {
            let mut action: Option<(usize, i32)> = None;
            ui.horizontal_wrapped(|ui| {
                let count = self.composer_images.len();
                for (i, image) in self.composer_images.iter().enumerate() {
                    ui.vertical(|ui| {
                        image.show(ui, THUMB_HEIGHT);
                        let (w, h) = image.size();
                        ui.small(format!("{w}x{h}"));
                        ui.horizontal(|ui| {
                            if ui
                                .add_enabled(i > 0, egui::Button::new("◀").small())
                                .clicked()
                            {
                                action = Some((i, -1));
                            }
                            if ui
                                .add_enabled(i + 1 < count, egui::Button::new("▶").small())
                                .clicked()
                            {
                                action = Some((i, 1));
                            }
                            if ui.small_button("✕").on_hover_text("Remove").clicked() {
                                action = Some((i, 0));
                            }
                        });
                    });
                }
            });
            match action {
                Some((i, 0)) => {
                    self.composer_images.remove(i);
                }
                Some((i, step)) => {
                    let j = (i as i32 + step) as usize;
                    self.composer_images.swap(i, j);
                }
                None => {}
            }
        }
        let image_seq_len = match &self.model {
            ModelState::Ready(info) => info.image_seq_len,
            _ => 0,
        };
        let new_tokens = self
            .settings
            .image_tokens(self.composer_images.len(), image_seq_len);
        let chat_tokens = self
            .settings
            .image_tokens(self.chat.image_count(), image_seq_len);
        ui.horizontal(|ui| {
            ui.small(format!(
                "{} image(s): {new_tokens} image tokens ({} with the chat's images)",
                self.composer_images.len(),
                new_tokens + chat_tokens
            ));
        });
        let mut send = false;
        ui.horizontal(|ui| {
            if ui.button("Add images…").clicked() {
                self.pick_images(ui.ctx());
            }
            let edit = egui::TextEdit::multiline(&mut self.composer_text)
                .hint_text("Ask about the images (Enter sends, Shift+Enter for a new line)")
                .desired_rows(2)
                .desired_width(ui.available_width() - 80.0);
            let response = ui.add(edit);
            if response.has_focus()
                && ui.input(|i| i.key_pressed(egui::Key::Enter) && !i.modifiers.shift)
            {
                // The Enter itself was typed into the text: take it back out.
                while self.composer_text.ends_with('\n') {
                    self.composer_text.pop();
                }
                send = true;
            }
            if self.pending.is_some() {
                if ui.button("Stop").clicked() {
                    self.worker.cancel.cancel();
                }
            } else {
                let ready = matches!(self.model, ModelState::Ready(_));
                send |= ui.add_enabled(ready, egui::Button::new("Send")).clicked();
            }
        });
        if send && !self.busy() {
            self.send();
        }
    }

    fn pick_images(&mut self, ctx: &egui::Context) {
        #[cfg(not(target_family = "wasm"))]
        {
            let picked = rfd::FileDialog::new()
                .add_filter("images", &["png", "jpg", "jpeg", "webp", "gif", "bmp"])
                .pick_files();
            for path in picked.unwrap_or_default() {
                let name = path.file_name().map_or_else(
                    || path.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                );
                match std::fs::read(&path) {
                    Ok(bytes) => self.add_image_bytes(ctx, &name, &bytes),
                    Err(e) => self
                        .errors
                        .push(format!("cannot read {}: {e}", path.display())),
                }
            }
        }
        #[cfg(target_family = "wasm")]
        crate::web::pick_images(self.files_tx.clone(), ctx.clone());
    }

    /// Files dropped on the window (images; or a model: a folder natively, its files in the
    /// browser) and pictures pasted from the clipboard.
    fn take_dropped_and_pasted(&mut self, ctx: &egui::Context) {
        let (dropped, pasted) = ctx.input(|i| {
            let pasted: Vec<_> = i
                .events
                .iter()
                .filter_map(|e| match e {
                    egui::Event::PasteImage(image) => Some(image.clone()),
                    _ => None,
                })
                .collect();
            (i.raw.dropped_files.clone(), pasted)
        });
        for image in pasted {
            self.pasted += 1;
            let name = format!("pasted-{}", self.pasted);
            self.composer_images
                .push(Attachment::from_color_image(ctx, &name, &image));
        }
        if dropped.is_empty() {
            return;
        }
        #[cfg(not(target_family = "wasm"))]
        for file in dropped {
            let path = file.path().to_path_buf();
            if path.is_dir() {
                self.load(ModelSource::Dir(path));
                continue;
            }
            let name = path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            match file.bytes() {
                Ok(bytes) => self.add_image_bytes(ctx, &name, &bytes),
                Err(e) => self.errors.push(format!("cannot read {name}: {e}")),
            }
        }
        #[cfg(target_family = "wasm")]
        crate::web::read_dropped(dropped, self.files_tx.clone(), ctx.clone());
    }
}

fn megabytes(bytes: usize) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}
