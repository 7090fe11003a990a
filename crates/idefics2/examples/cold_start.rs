//! Where a process's first answer spends its time on a GPU device: load, then the first
//! generation profiled by kind (`cargo run --release --workspace --example cold_start`).

use std::ops::ControlFlow;
use std::time::Instant;

use burn::tensor::DType;
use idefics2::pipeline::{Pipeline, Prompt, Request};
use idefics2::processor::ImageOptions;
use idefics2::{DeviceChoice, init_device, profile};

fn main() {
    let start = Instant::now();
    let device = init_device(DeviceChoice::Gpu).expect("a GPU device");
    let dir = idefics2::default_model::default_model_dir().expect("the default model");
    let pipeline = Pipeline::load(&dir, &device, DType::F32).expect("loads");
    let _ = device.sync();
    let loaded = start.elapsed().as_secs_f64();
    let image = image::open("assets/samples/shapes.png").expect("the sample image");
    let request = Request {
        prompt: Prompt::Raw(
            "User:<image>What color is the shape?<end_of_utterance>\nAssistant:".into(),
        ),
        images: vec![image],
    };
    let input = pipeline
        .prepare(&[request], &ImageOptions::default())
        .expect("prepares");
    for run in 0..2 {
        profile::enable(true);
        let t = Instant::now();
        let options = pipeline.generation_options(1);
        pipeline
            .model
            .generate(&input, &options, |_| ControlFlow::Continue(()))
            .expect("generates");
        let seconds = t.elapsed().as_secs_f64();
        println!("run {run}: {seconds:.2} s (load and sync {loaded:.2} s)");
        for (kind, s, calls) in profile::take() {
            if s > 0.05 {
                println!("  {kind}: {s:.2} s ({calls} calls)");
            }
        }
    }
}
