//! Barrier arrivals on the coordinator: `POST /barriers/{name}/arrive`, which the server holds
//! until the barrier opens or the wait runs out.
//!
//! Retries of one arrival (a failover, a lost connection) reuse its request id, so the server
//! counts the participant once. If the server took the arrival back because an earlier
//! connection of it closed, the arrival is over without opening, and [`meet`] arrives anew.
//!
//! [`meet`]: sentinel_core::strategy::meet

use http::{Method, StatusCode};

use sentinel_core::barrier::{ArriveRequest, Arrived, count_mismatch, validate_count};
use sentinel_core::error::Result;
use sentinel_core::lease;
use sentinel_core::lock::validate_name;
use sentinel_proto::api::{ArriveBody, OpenedAnswer, code};

use super::{MAX_WAIT, ServerBackend, encode, json, request_id};

impl ServerBackend {
    pub(super) async fn arrive_at(&self, req: &ArriveRequest) -> Result<Arrived> {
        validate_name(&req.barrier)?;
        validate_count(req.count)?;
        let wait = req.wait.min(MAX_WAIT);
        let body = ArriveBody {
            holder: req.claimant.worker_id.clone(),
            count: req.count,
            wait_ms: lease::millis(wait),
            node: Some(req.claimant.node_id.clone()),
            request_id: Some(request_id()),
        };
        let path = format!("/barriers/{}/arrive", encode(&req.barrier));
        let answer = self
            .call(Method::POST, &path, Some(json(&body)?), wait)
            .await?;
        match answer.status {
            StatusCode::OK => {
                let opened: OpenedAnswer = answer.parse("arrive")?;
                Ok(Arrived::Opened {
                    count: opened.count,
                })
            }
            StatusCode::CONFLICT => {
                let e = answer.error();
                match e.code.as_str() {
                    code::WAIT_TIMED_OUT => Ok(Arrived::NotOpened {
                        arrived: e.arrived.unwrap_or(0),
                        count: e.count.unwrap_or(req.count),
                    }),
                    code::WITHDRAWN => Ok(Arrived::NotOpened {
                        arrived: 0,
                        count: req.count,
                    }),
                    code::COUNT_MISMATCH => Err(count_mismatch(
                        &req.barrier,
                        e.count.unwrap_or_default(),
                        req.count,
                    )),
                    _ => Err(self.fail(&answer)),
                }
            }
            _ => Err(self.fail(&answer)),
        }
    }
}
