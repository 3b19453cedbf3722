use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use warren_store::StoreError;

/// Every API failure, mapped to a status code and ngrok's error body. Internal details
/// (database errors) are logged, never returned.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    msg: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, msg: impl Into<String>) -> ApiError {
        ApiError { status, code, msg: msg.into(), retry_after: None }
    }
    pub(crate) fn bad_request(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "ERR_WARREN_400", msg)
    }
    pub(crate) fn missing_version() -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "ERR_NGROK_218",
            "the Ngrok-Version header is missing or unsupported; send Ngrok-Version: 2",
        )
    }
    pub(crate) fn unauthorized(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "ERR_WARREN_401", msg)
    }
    pub(crate) fn forbidden(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "ERR_WARREN_403", msg)
    }
    pub(crate) fn not_found(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "ERR_WARREN_404", msg)
    }
    pub(crate) fn conflict(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "ERR_WARREN_409", msg)
    }
    pub(crate) fn rate_limited(retry_after: u64) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "ERR_NGROK_226",
            format!("too many requests with this API key; retry after {retry_after} s"),
        );
        e.retry_after = Some(retry_after);
        e
    }
    /// An error of any status, with warren's code for it (`ERR_WARREN_<status>`).
    pub(crate) fn from_status(status: StatusCode, msg: impl Into<String>) -> ApiError {
        let code = match status.as_u16() {
            400 => "ERR_WARREN_400",
            401 => "ERR_WARREN_401",
            403 => "ERR_WARREN_403",
            404 => "ERR_WARREN_404",
            405 => "ERR_WARREN_405",
            409 => "ERR_WARREN_409",
            413 => "ERR_WARREN_413",
            415 => "ERR_WARREN_415",
            _ => "ERR_WARREN_500",
        };
        ApiError::new(status, code, msg)
    }
    pub(crate) fn internal() -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ERR_WARREN_500",
            "internal error; see the edge's log",
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound(what) => ApiError::not_found(format!("{what} not found")),
            StoreError::Conflict(what) => ApiError::conflict(format!("{what} already exists")),
            StoreError::Invalid(msg) => ApiError::bad_request(format!("invalid {msg}")),
            StoreError::InUse(msg) => ApiError::conflict(msg),
            StoreError::Taken(msg) => ApiError::conflict(msg),
            other => {
                tracing::error!(error = %other, "store failed during an API call");
                ApiError::internal()
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error_code": self.code,
            "status_code": self.status.as_u16(),
            "msg": self.msg,
            "details": {},
        });
        let mut res = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after {
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        res
    }
}
