//! The HTTP API: routes, request parsing, responses.

mod apps;
mod builds;
mod deploys;
mod hostnames;
mod images;
mod machines;
mod orgs;
mod secrets;
mod tokens;

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::{Json, Router, middleware};
use serde::de::DeserializeOwned;

use crate::auth::require_token;
use crate::error::ApiError;
use crate::supervisor::Control;

/// The OpenAPI document of the implemented routes.
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// Largest JSON body accepted.
const MAX_JSON_BODY: usize = 4 << 20;

/// The API router.
pub fn router(control: Arc<Control>) -> Router {
    let authed = Router::new()
        .route("/v1/apps", get(apps::list).post(apps::create))
        .route("/v1/apps/{app}", get(apps::get).delete(apps::delete))
        .route(
            "/v1/apps/{app}/machines",
            get(machines::list).post(machines::create),
        )
        .route(
            "/v1/apps/{app}/machines/{id}",
            get(machines::get)
                .post(machines::update)
                .delete(machines::destroy),
        )
        .route("/v1/apps/{app}/machines/{id}/start", post(machines::start))
        .route("/v1/apps/{app}/machines/{id}/stop", post(machines::stop))
        .route(
            "/v1/apps/{app}/machines/{id}/restart",
            post(machines::restart),
        )
        .route(
            "/v1/apps/{app}/machines/{id}/signal",
            post(machines::signal),
        )
        .route("/v1/apps/{app}/machines/{id}/wait", get(machines::wait))
        .route("/v1/apps/{app}/machines/{id}/events", get(machines::events))
        .route("/v1/apps/{app}/machines/{id}/logs", get(machines::logs))
        .route(
            "/v1/apps/{app}/deploys",
            get(deploys::list).post(deploys::create),
        )
        .route("/v1/apps/{app}/deploys/{id}", get(deploys::get))
        .route("/v1/apps/{app}/deploys/{id}/events", get(deploys::events))
        .route("/v1/apps/{app}/releases", get(deploys::releases))
        .route("/v1/apps/{app}/rollback", post(deploys::rollback))
        .route("/v1/apps/{app}/scale", post(deploys::scale))
        .route("/v1/apps/{app}/status", get(deploys::status))
        .route(
            "/v1/apps/{app}/hostnames",
            get(hostnames::list).post(hostnames::add),
        )
        .route(
            "/v1/apps/{app}/hostnames/{hostname}",
            axum::routing::delete(hostnames::remove),
        )
        .route(
            "/v1/apps/{app}/secrets",
            get(secrets::list).post(secrets::update),
        )
        .route(
            "/v1/apps/{app}/secrets/{name}",
            get(secrets::get)
                .post(secrets::set_one)
                .delete(secrets::unset_one),
        )
        .route(
            "/v1/secrets/rotate-master-key",
            post(secrets::rotate_master_key),
        )
        .route("/v1/orgs", get(orgs::list).post(orgs::create))
        .route("/v1/tokens", get(tokens::list).post(tokens::create))
        .route("/v1/tokens/{id}", axum::routing::delete(tokens::revoke))
        .route("/v1/images", get(images::list))
        .route("/v1/images/import", post(images::import))
        .route("/v1/images/pull", post(images::pull))
        .route("/v1/images/gc", post(images::gc))
        .route("/v1/apps/{app}/builds", post(builds::create))
        .route("/v1/images/{name}", axum::routing::delete(images::remove))
        .route_layer(middleware::from_fn_with_state(
            control.clone(),
            require_token,
        ));
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"ok": true})) }),
        )
        .route(
            "/v1/openapi.json",
            get(|| async {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    OPENAPI,
                )
            }),
        )
        .merge(authed)
        // Errors are JSON, also for a known path with a method it does not serve
        // (axum's default is an empty 405). Must come after the routes it applies to.
        .method_not_allowed_fallback(|req: Request| async move {
            (
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                Json(serde_json::json!({ "error": format!(
                    "{} is not allowed on {}: see GET /v1/openapi.json for its methods",
                    req.method(),
                    req.uri().path()
                ) })),
            )
        })
        .fallback(|req: Request| async move {
            ApiError::NotFound(format!(
                "no route for {} {}: see GET /v1/openapi.json",
                req.method(),
                req.uri().path()
            ))
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_JSON_BODY))
        .with_state(control)
}

/// A JSON body whose rejection is a JSON error naming the problem.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::BadRequest(
                "expected a JSON body with `Content-Type: application/json`".into(),
            )),
            Err(JsonRejection::BytesRejection(e)) => {
                Err(ApiError::TooLarge(format!("could not read the body: {e}")))
            }
            Err(e) => Err(ApiError::BadRequest(format!(
                "invalid JSON body: {}",
                e.body_text()
            ))),
        }
    }
}

/// Query parameters whose rejection is a JSON error.
pub struct Q<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Q(v)),
            Err(e @ QueryRejection::FailedToDeserializeQueryString(_)) => {
                Err(ApiError::BadRequest(e.body_text()))
            }
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}
