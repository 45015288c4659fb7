//! `GET /docs`: Swagger UI for the OpenAPI document that `GET /openapi.json` serves.
//!
//! The page and its scripts are utoipa-swagger-ui's vendored copy, compiled into the
//! binary: nothing is fetched from the internet at build or run time, and the validator
//! badge (which would call an outside service) is off. URLs are relative, so the page
//! also works behind a proxy that mounts lockd under a path prefix.

use std::sync::{Arc, LazyLock};

use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use utoipa_swagger_ui::Config;

use crate::error::ApiError;

/// Swagger UI's settings: which document to show, and no outside validator.
static CONFIG: LazyLock<Arc<Config<'static>>> = LazyLock::new(|| {
    Arc::new(
        // From `/docs/`, this is `/openapi.json`.
        Config::new(["../openapi.json"])
            .validator_url("none")
            // No "explore another URL" bar: this page documents this server.
            .use_base_layout()
            .display_operation_id(true)
            .try_it_out_enabled(true),
    )
});

/// `/docs` → `/docs/`, so the page's relative asset URLs resolve under `/docs/`.
pub async fn docs_redirect() -> Redirect {
    Redirect::permanent("docs/")
}

/// The Swagger UI page.
pub async fn docs_index() -> Response {
    asset("")
}

/// Swagger UI's scripts, styles and icons.
pub async fn docs_asset(Path(path): Path<String>) -> Response {
    asset(&path)
}

fn asset(path: &str) -> Response {
    match utoipa_swagger_ui::serve(path, Arc::clone(&CONFIG)) {
        Ok(Some(file)) => {
            let content_type = HeaderValue::try_from(file.content_type)
                .unwrap_or(HeaderValue::from_static("application/octet-stream"));
            let mut response = (
                [(header::CONTENT_TYPE, content_type)],
                file.bytes.into_owned(),
            )
                .into_response();
            if file.gzpipped {
                response
                    .headers_mut()
                    .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            response
        }
        Ok(None) => ApiError::RouteNotFound(format!("/docs/{path}")).into_response(),
        Err(error) => {
            ApiError::Internal(format!("Swagger UI asset {path}: {error}")).into_response()
        }
    }
}
