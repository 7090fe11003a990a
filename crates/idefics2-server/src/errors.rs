//! One error type for every route. TGI's routes answer `{"error", "error_type"}`, OpenAI's
//! (`/v1/...`) `{"error": {"message", "type", "param", "code"}}`, with TGI's status codes:
//! 422 validation, 429 overloaded, 424 generation.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use idefics2::engine::SubmitError;
use serde::de::DeserializeOwned;
use serde_json::json;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// TGI's `error_type`: `validation`, `overloaded`, `generation`, ...; also the metrics label.
    pub kind: &'static str,
    pub message: String,
    /// The request field at fault, when there is one (OpenAI's `param`).
    pub param: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            param: None,
        }
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation", message)
    }

    pub fn with_param(mut self, param: &str) -> Self {
        self.param = Some(param.to_owned());
        self
    }

    pub fn generation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FAILED_DEPENDENCY, "generation", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// TGI's body.
    pub fn tgi_json(&self) -> serde_json::Value {
        json!({"error": self.message, "error_type": self.kind})
    }

    /// OpenAI's body.
    pub fn openai_json(&self) -> serde_json::Value {
        let kind = match self.status.as_u16() {
            401 => "authentication_error",
            429 => "rate_limit_error",
            500..=599 | 424 => "server_error",
            _ => "invalid_request_error",
        };
        json!({"error": {
            "message": self.message,
            "type": kind,
            "param": self.param,
            "code": self.kind,
        }})
    }

    pub fn tgi(self) -> Response {
        crate::metrics::failure(self.kind);
        (self.status, axum::Json(self.tgi_json())).into_response()
    }

    pub fn openai(self) -> Response {
        crate::metrics::failure(self.kind);
        (self.status, axum::Json(self.openai_json())).into_response()
    }

    /// In the shape of the route `uri` belongs to.
    pub fn for_uri(self, uri: &Uri) -> Response {
        if uri.path().starts_with("/v1/") {
            self.openai()
        } else {
            self.tgi()
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(error: SubmitError) -> Self {
        match error {
            SubmitError::Validation(message) => Self::validation(message),
            SubmitError::Overloaded { .. } => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded",
                error.to_string(),
            ),
            SubmitError::ShuttingDown => Self::unavailable(error.to_string()),
        }
    }
}

/// A TGI route's error.
pub struct TgiError(pub ApiError);

impl IntoResponse for TgiError {
    fn into_response(self) -> Response {
        self.0.tgi()
    }
}

impl<E: Into<ApiError>> From<E> for TgiError {
    fn from(error: E) -> Self {
        Self(error.into())
    }
}

/// An OpenAI route's error.
pub struct OpenAiError(pub ApiError);

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        self.0.openai()
    }
}

impl<E: Into<ApiError>> From<E> for OpenAiError {
    fn from(error: E) -> Self {
        Self(error.into())
    }
}

/// The body as `T`: a body over the payload limit is a 413, a syntax error a 400, a wrong field a
/// 422, each naming the problem (serde's message has the line, the column and the field).
pub fn parse_json<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(|rejection| {
        let status = rejection.status();
        let kind = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "payload_too_large"
        } else {
            "invalid_request"
        };
        ApiError::new(status, kind, rejection.body_text())
    })?;
    let mut deserializer = serde_json::Deserializer::from_slice(&body);
    let (path, result) = match serde_path_to_error::deserialize::<_, T>(&mut deserializer) {
        Ok(value) => (String::new(), deserializer.end().map(|()| value)),
        Err(e) => (e.path().to_string(), Err(e.into_inner())),
    };
    result.map_err(|inner| {
        let status = if inner.is_data() {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::BAD_REQUEST
        };
        let located = !path.is_empty() && path != "." && path != "?";
        let message = if located {
            format!("invalid JSON body at `{path}`: {inner}")
        } else {
            format!("invalid JSON body: {inner}")
        };
        let error = ApiError::new(status, "invalid_request", message);
        if located {
            error.with_param(&path)
        } else {
            error
        }
    })
}

/// An unknown route.
pub async fn not_found(uri: Uri) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route {}", uri.path()),
    )
    .for_uri(&uri)
}
