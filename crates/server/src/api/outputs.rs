//! `GET /v1/outputs/{prediction_id}/{file}?exp=…&sig=…`: a signed, expiring download of one sealed output
//! file, decrypted while it streams (each chunk authenticated before it is sent). No API key: the
//! signature is the capability, like a CDN link. Every failure — bad or missing signature, expired link,
//! unknown prediction or file, purged data — is the same `404`.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;
use serde::Deserialize;
use skygate_core::predictions::{object_key, PredictionId, StoredOutput};
use skygate_core::Timestamp;
use skygate_proto::ErrorId;

use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery};
use crate::predictions::worker::output_aad;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
pub struct OutputPath {
    id: String,
    file: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct SignedQuery {
    exp: Option<String>,
    sig: Option<String>,
}

fn gone() -> ApiError {
    ApiError::new(
        ErrorId::NotFound,
        "Not found",
        "This output does not exist, its link has expired, or its data has been deleted.",
    )
}

pub async fn download(
    State(state): State<AppState>,
    ApiPath(p): ApiPath<OutputPath>,
    ApiQuery(q): ApiQuery<SignedQuery>,
) -> Result<Response, ApiError> {
    let id: PredictionId = p.id.parse().map_err(|_| gone())?;
    let exp: i64 = q.exp.as_deref().and_then(|e| e.parse().ok()).ok_or_else(gone)?;
    let sig = q.sig.as_deref().ok_or_else(gone)?;
    let now = Timestamp::now().as_unix_seconds();
    if !state.signer().verify(&id, &p.file, exp, sig, now) {
        return Err(gone());
    }
    let rec = state.store().find_prediction(&id).await?.ok_or_else(gone)?;
    if rec.data_removed {
        return Err(gone());
    }
    let Some(StoredOutput::Files { files }) = &rec.output else {
        return Err(gone());
    };
    let file = files.iter().find(|f| f.name == p.file).ok_or_else(gone)?;
    let key = object_key(&rec.account, &id, &file.name);
    let stream = state
        .objects()
        .get_stream(&key, &output_aad(&rec.account, &id, &file.name))
        .await
        .map_err(|e| match e {
            // Deleted between the row read and here (a purge racing the download).
            skygate_store::StoreError::Objects(_) => gone(),
            other => ApiError::internal(&other),
        })?;
    let body = Body::from_stream(stream.map_err(|e| {
        tracing::error!(error = %e, "an output stream failed while sending");
        std::io::Error::other("output stream failed")
    }));
    let mut res = (StatusCode::OK, body).into_response();
    let h = res.headers_mut();
    let ctype = HeaderValue::from_str(&file.content_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_TYPE, ctype);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(file.size));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("inline; filename=\"{}\"", file.name)) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(res)
}
