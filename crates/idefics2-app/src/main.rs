//! `idefics2-app`: the desktop chat window.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use eframe::egui_wgpu::{WgpuSetup, WgpuSetupExisting};
use idefics2_app::engine::ModelSource;
use idefics2_app::script::Script;
use idefics2_app::settings::DeviceKind;
use idefics2_app::{ChatApp, Gpu, Startup};

#[derive(Parser, Debug)]
#[command(version, about = "Chat with Idefics2 about your images")]
struct Args {
    /// Model directory (hub layout) to open at start. Default: the tiny shapes model embedded in
    /// this binary (unpacked into the user data directory on first use).
    #[arg(long, env = "IDEFICS2_MODEL")]
    model: Option<PathBuf>,
    /// Scripted session (tests, demos): attach this image once the model is ready (repeatable).
    #[arg(long = "send-image")]
    send_images: Vec<PathBuf>,
    /// Scripted session: the question to send with the images.
    #[arg(long)]
    ask: Option<String>,
    /// Scripted session: save a screenshot of the window (PNG) after the answer.
    #[arg(long)]
    screenshot: Option<PathBuf>,
    /// Scripted session: write the answer and its figures (JSON) here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Scripted session: close the window when done.
    #[arg(long)]
    exit: bool,
    /// Where the model runs (the window always draws with the GPU adapter): auto picks the GPU
    /// when it is a real one, else the CPU device.
    #[arg(long, value_enum, default_value = "auto", env = "IDEFICS2_DEVICE")]
    device: DeviceFlag,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum DeviceFlag {
    Auto,
    Cpu,
    Gpu,
}

fn main() -> ExitCode {
    idefics2::quiet_headless_wayland();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    idefics2::exit_on_panic();
    let args = Args::parse();
    let script = match scripted(&args) {
        Ok(script) => script,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // One wgpu device for burn and the window: burn picks the adapter, eframe draws with it.
    let (gpu, setup) = match idefics2::init_gpu_with_setup() {
        Ok((device, setup)) => {
            let gpu = Gpu::new(device, &setup.adapter);
            (Some(gpu), Some(setup))
        }
        Err(e) => {
            eprintln!("error: no usable GPU adapter for the window: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("Idefics2")
            .with_inner_size([1100.0, 720.0])
            .with_drag_and_drop(true),
        renderer: eframe::Renderer::Wgpu,
        ..Default::default()
    };
    if let Some(setup) = setup {
        options.wgpu_options.wgpu_setup = WgpuSetup::Existing(WgpuSetupExisting {
            instance: setup.instance,
            adapter: setup.adapter,
            device: setup.device,
            queue: setup.queue,
        });
    }
    let model = match args.model.clone() {
        Some(dir) => dir,
        None => match idefics2::default_model::default_model_dir() {
            Ok(dir) => dir,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let startup = Startup {
        gpu,
        device: match args.device {
            DeviceFlag::Auto => None,
            DeviceFlag::Cpu => Some(DeviceKind::Cpu),
            DeviceFlag::Gpu => Some(DeviceKind::Gpu),
        },
        model: Some(ModelSource::Dir(model)),
        script,
    };
    match eframe::run_native(
        "Idefics2",
        options,
        Box::new(move |cc| Ok(Box::new(ChatApp::new(&cc.egui_ctx, startup)))),
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn scripted(args: &Args) -> Result<Option<Script>, String> {
    let Some(question) = &args.ask else {
        return Ok(None);
    };
    let images = args
        .send_images
        .iter()
        .map(|path| {
            let bytes =
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let name = path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            Ok((name, bytes))
        })
        .collect::<Result<_, String>>()?;
    let mut script = Script::new(images, question.clone());
    script.screenshot = args.screenshot.clone();
    script.report = args.report.clone();
    script.exit = args.exit;
    Ok(Some(script))
}
