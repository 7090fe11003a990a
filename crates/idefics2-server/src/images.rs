//! Images in requests: TGI's markdown `![](...)` in a prompt and OpenAI's `image_url` parts, each
//! a `data:image/...;base64,...` URI or an `http(s)://` URL, fetched with a size cap, a time limit
//! and a redirect limit. A header that declares more pixels than the limit is refused before the
//! image is decoded, so a small file cannot ask for a huge allocation.

use std::io::Cursor;

use base64::Engine as _;
use idefics2::processor::{DynamicImage, load_image_bytes_within};

use crate::errors::ApiError;
use crate::state::{AppState, ServerLimits};

/// `prompt` with each markdown image replaced by `<image>`, and the images' addresses in order.
pub fn split_markdown_images(prompt: &str) -> (String, Vec<String>) {
    let mut text = String::with_capacity(prompt.len());
    let mut sources = Vec::new();
    let mut rest = prompt;
    while let Some(start) = rest.find("![](") {
        let after = &rest[start + 4..];
        let Some(end) = after.find(')') else {
            break;
        };
        text.push_str(&rest[..start]);
        text.push_str("<image>");
        sources.push(after[..end].trim().to_owned());
        rest = &after[end + 1..];
    }
    text.push_str(rest);
    (text, sources)
}

/// The bytes behind `source`: a data URI decoded, or a URL fetched.
pub async fn fetch(state: &AppState, source: &str) -> Result<Vec<u8>, ApiError> {
    let limits = &state.limits;
    if let Some(data) = source.strip_prefix("data:") {
        let Some((header, payload)) = data.split_once(',') else {
            return Err(ApiError::validation("image data URI without a `,`"));
        };
        if !header.ends_with(";base64") {
            return Err(ApiError::validation(format!(
                "image data URI `data:{header},...` is not base64 (`data:<mime>;base64,<data>`)"
            )));
        }
        if payload.len() / 4 * 3 > limits.image_bytes {
            return Err(too_large(limits));
        }
        return base64::engine::general_purpose::STANDARD
            .decode(payload.trim())
            .map_err(|e| ApiError::validation(format!("image data URI: invalid base64: {e}")));
    }
    if !(source.starts_with("http://") || source.starts_with("https://")) {
        let shown: String = source.chars().take(60).collect();
        return Err(ApiError::validation(format!(
            "image `{shown}` is neither a data URI (`data:image/...;base64,...`) nor an http(s) URL"
        )));
    }
    let failed = |e: reqwest::Error| {
        let why = if e.is_timeout() {
            format!("no answer within {:?}", limits.fetch_timeout)
        } else if e.is_redirect() {
            format!("more than {} redirects", limits.fetch_redirects)
        } else {
            // reqwest's own message is generic; the cause (refused, DNS, TLS) is in its sources.
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            text
        };
        ApiError::validation(format!("fetching image {source}: {why}"))
    };
    let mut response = state.http.get(source).send().await.map_err(failed)?;
    if !response.status().is_success() {
        return Err(ApiError::validation(format!(
            "fetching image {source}: HTTP {}",
            response.status()
        )));
    }
    if response
        .content_length()
        .is_some_and(|n| n > limits.image_bytes as u64)
    {
        return Err(too_large(limits));
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(failed)? {
        if bytes.len() + chunk.len() > limits.image_bytes {
            return Err(too_large(limits));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

fn too_large(limits: &ServerLimits) -> ApiError {
    ApiError::validation(format!(
        "image is larger than the limit of {} bytes",
        limits.image_bytes
    ))
}

/// Decodes `bytes` as the CLI decodes an image file, after checking the declared size.
pub fn decode(bytes: &[u8], limits: &ServerLimits, index: usize) -> Result<DynamicImage, ApiError> {
    let (width, height) = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .ok()
        .and_then(|reader| reader.into_dimensions().ok())
        .ok_or_else(|| {
            ApiError::validation(format!(
                "image {index}: not a PNG, JPEG, WebP, GIF or BMP image the server can read"
            ))
        })?;
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.image_pixels {
        return Err(ApiError::validation(format!(
            "image {index} is {width}x{height} ({pixels} pixels), over the limit of {} pixels",
            limits.image_pixels
        )));
    }
    // The decoder's own buffers may not outgrow what the pixel limit allows (16-bit RGBA, 8
    // bytes a pixel), whatever the file says elsewhere.
    let max_alloc = limits.image_pixels.saturating_mul(8);
    load_image_bytes_within(bytes, max_alloc)
        .map_err(|e| ApiError::validation(format!("image {index}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_images_become_placeholders() {
        let (text, sources) =
            split_markdown_images("User:![](data:image/png;base64,AAA)Hi ![]( http://x/a.png )?");
        assert_eq!(text, "User:<image>Hi <image>?");
        assert_eq!(sources, vec!["data:image/png;base64,AAA", "http://x/a.png"]);
        let (text, sources) = split_markdown_images("no image ![](unclosed");
        assert_eq!(text, "no image ![](unclosed");
        assert!(sources.is_empty());
    }
}
