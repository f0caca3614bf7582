//! The gRPC face of evaluation (`kopilka.rules.v1.EvaluationService`): each handler resolves
//! the program through the shared cache and calls the pure functions ([`evaluate`],
//! [`tier::decide`], [`action::evaluate_action`], [`Simulation`]). Every RPC here is read-only.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use kopilka_proto::rules::evaluation_service_server::EvaluationService;
use kopilka_proto::rules::{self as pb, simulate_request::Item, ProgramRef, TierTrigger};
use kopilka_proto::wkt::Timestamp;
use kopilka_runtime::validate::Violations;
use rust_decimal::Decimal;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::error::Error;
use crate::evaluate::{evaluate_with, Redemption};
use crate::money::{self, Sign};
use crate::plan::Plan;
use crate::programs::Programs;
use crate::simulate::Simulation;
use crate::{action, tier};

/// Most receipts one Simulate call accepts.
pub const MAX_SIMULATED_RECEIPTS: u64 = 1_000_000;

/// The tonic service.
#[derive(Clone)]
pub struct EvaluationApi {
    programs: Programs,
}

impl EvaluationApi {
    pub fn new(programs: Programs) -> Self {
        Self { programs }
    }
}

fn instant(t: &Option<Timestamp>, field: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, Error> {
    match t {
        None => Ok(now),
        Some(t) => kopilka_runtime::timestamps::from_proto(t)
            .ok_or_else(|| Error::invalid(field, "is not a valid timestamp")),
    }
}

fn input<'a>(
    input: &'a Option<pb::EvaluationInput>,
    field: &str,
) -> Result<&'a pb::EvaluationInput, Error> {
    input
        .as_ref()
        .ok_or_else(|| Error::invalid(field, "is required"))
}

impl EvaluationApi {
    async fn plan(
        &self,
        merchant: &str,
        program: Option<&ProgramRef>,
        at: DateTime<Utc>,
        allow_drafts: bool,
        tier_codes: &[String],
    ) -> Result<(Arc<Plan>, Vec<pb::Violation>), Error> {
        let resolved = self
            .programs
            .resolve(merchant, program, at, allow_drafts, tier_codes)
            .await?;
        Ok((resolved.plan, resolved.violations))
    }

    async fn run(
        &self,
        merchant: &str,
        plan: &Plan,
        input: &pb::EvaluationInput,
        redemption: Redemption,
    ) -> Result<pb::EvaluationResult, Error> {
        let catalog = self.programs.catalog(merchant).await?;
        evaluate_with(plan, input, &catalog, Utc::now(), redemption)
    }

    async fn do_evaluate(&self, r: &pb::EvaluateRequest) -> Result<pb::EvaluateResponse, Error> {
        let now = Utc::now();
        let input = input(&r.input, "input")?;
        let at = instant(&input.occurred_at, "input.occurred_at", now)?;
        let (plan, _) = self
            .plan(&r.merchant_id, r.program.as_ref(), at, false, &[])
            .await?;
        Ok(pb::EvaluateResponse {
            result: Some(
                self.run(&r.merchant_id, &plan, input, Redemption::Refuse)
                    .await?,
            ),
        })
    }

    async fn do_dry_run(&self, r: &pb::DryRunRequest) -> Result<pb::DryRunResponse, Error> {
        let now = Utc::now();
        let input = input(&r.input, "input")?;
        let at = instant(&input.occurred_at, "input.occurred_at", now)?;
        match self
            .plan(&r.merchant_id, r.program.as_ref(), at, true, &r.tier_codes)
            .await
        {
            Ok((plan, violations)) => Ok(pb::DryRunResponse {
                result: Some(
                    self.run(&r.merchant_id, &plan, input, Redemption::Refuse)
                        .await?,
                ),
                violations,
            }),
            // The constructor's preview shows what is wrong instead of failing.
            Err(Error::ProgramInvalid(violations)) => Ok(pb::DryRunResponse {
                result: None,
                violations,
            }),
            Err(e) => Err(e),
        }
    }

    async fn do_compare(
        &self,
        r: &pb::CompareVersionsRequest,
    ) -> Result<pb::CompareVersionsResponse, Error> {
        let now = Utc::now();
        let input = input(&r.input, "input")?;
        let at = instant(&input.occurred_at, "input.occurred_at", now)?;
        if r.candidate
            .as_ref()
            .and_then(|c| c.source.as_ref())
            .is_none()
        {
            return Err(Error::invalid("candidate", "is required"));
        }
        let (base_plan, _) = self
            .plan(&r.merchant_id, r.base.as_ref(), at, true, &[])
            .await?;
        let (cand_plan, _) = self
            .plan(&r.merchant_id, r.candidate.as_ref(), at, true, &[])
            .await?;
        let base = self
            .run(&r.merchant_id, &base_plan, input, Redemption::Cap)
            .await?;
        let candidate = self
            .run(&r.merchant_id, &cand_plan, input, Redemption::Cap)
            .await?;
        let s = cand_plan.settings();
        let d = |a: &str, b: &str| {
            money::parse(a, 6, Sign::NonNegative).unwrap_or_default()
                - money::parse(b, 6, Sign::NonNegative).unwrap_or_default()
        };
        let lines = candidate
            .lines
            .iter()
            .zip(&base.lines)
            .map(|(c, b)| pb::LineDiff {
                line_id: c.line_id.clone(),
                discount: s.fmt_money(d(&c.discount, &b.discount)),
                accrual_points: s.fmt_points(d(&c.accrual_points, &b.accrual_points)),
                max_redeem_points: s.fmt_points(d(&c.max_redeem_points, &b.max_redeem_points)),
            })
            .collect();
        let (ct, bt) = (
            candidate.totals.clone().unwrap_or_default(),
            base.totals.clone().unwrap_or_default(),
        );
        Ok(pb::CompareVersionsResponse {
            lines,
            discount: s.fmt_money(d(&ct.discount, &bt.discount)),
            points_accrued: s.fmt_points(d(&ct.points_accrued, &bt.points_accrued)),
            max_redeem_points: s.fmt_points(d(&ct.max_redeem_points, &bt.max_redeem_points)),
            base: Some(base),
            candidate: Some(candidate),
        })
    }

    async fn do_simulate(
        &self,
        mut stream: Streaming<pb::SimulateRequest>,
    ) -> Result<pb::SimulateResponse, Status> {
        let first = stream.next().await.ok_or_else(|| {
            Status::from(Error::invalid(
                "setup",
                "the first message must carry the setup",
            ))
        })??;
        let merchant = first.merchant_id.clone();
        let Some(Item::Setup(setup)) = first.item else {
            return Err(Error::invalid("setup", "the first message must carry the setup").into());
        };
        if setup
            .candidate
            .as_ref()
            .and_then(|c| c.source.as_ref())
            .is_none()
        {
            return Err(Error::invalid("setup.candidate", "is required").into());
        }
        let now = Utc::now();
        let (candidate, _) = self
            .plan(&merchant, setup.candidate.as_ref(), now, true, &[])
            .await?;
        let fixed_baseline = match setup.baseline.as_ref().and_then(|b| b.source.as_ref()) {
            Some(_) => Some(
                self.plan(&merchant, setup.baseline.as_ref(), now, true, &[])
                    .await?
                    .0,
            ),
            None => None,
        };
        let catalog = self.programs.catalog(&merchant).await?;
        let mut names: Vec<(String, String)> = candidate
            .rules
            .iter()
            .map(|r| (r.id.clone(), r.name.clone()))
            .collect();
        if let Some(b) = &fixed_baseline {
            names.extend(b.rules.iter().map(|r| (r.id.clone(), r.name.clone())));
        }
        let s = candidate.settings();
        let mut sim = Simulation::new(setup.max_errors, names, s.money_scale, s.points_scale);
        // Versions active at the receipts' times whose rule names are known.
        let mut seen_baselines: HashSet<u64> = HashSet::new();
        let mut count = 0u64;
        while let Some(message) = stream.next().await {
            let message = message?;
            if message.merchant_id != merchant {
                return Err(
                    Error::invalid("merchant_id", "must be the same in every message").into(),
                );
            }
            let Some(Item::Receipt(receipt)) = message.item else {
                return Err(
                    Error::invalid("setup", "only the first message may carry the setup").into(),
                );
            };
            count += 1;
            if count > MAX_SIMULATED_RECEIPTS {
                let mut v = Violations::new();
                v.limit("receipt", MAX_SIMULATED_RECEIPTS, "receipts per call");
                return Err(Error::Invalid(v).into());
            }
            let Some(input) = receipt.input.as_ref() else {
                sim.add(
                    &receipt.receipt_id,
                    &pb::EvaluationInput::default(),
                    Err(Error::invalid("receipt.input", "is required")),
                    Err(Error::invalid("receipt.input", "is required")),
                );
                continue;
            };
            let cand = evaluate_with(&candidate, input, &catalog, now, Redemption::Cap);
            let base = match &fixed_baseline {
                Some(b) => evaluate_with(b, input, &catalog, now, Redemption::Cap),
                None => {
                    let at = instant(&input.occurred_at, "input.occurred_at", now);
                    match at {
                        Err(e) => Err(e),
                        Ok(at) => match self.plan(&merchant, None, at, false, &[]).await {
                            Err(e) => Err(e),
                            Ok((plan, _)) => {
                                if seen_baselines.insert(plan.version()) {
                                    for rule in &plan.rules {
                                        sim.name(&rule.id, &rule.name);
                                    }
                                }
                                evaluate_with(&plan, input, &catalog, now, Redemption::Cap)
                            }
                        },
                    }
                }
            };
            sim.add(&receipt.receipt_id, input, cand, base);
        }
        Ok(sim.finish(candidate.version()))
    }

    async fn do_decide_tier(
        &self,
        r: &pb::DecideTierRequest,
    ) -> Result<pb::DecideTierResponse, Error> {
        let at = instant(&r.decided_at, "decided_at", Utc::now())?;
        let customer = r
            .customer
            .as_ref()
            .ok_or_else(|| Error::invalid("customer", "is required"))?;
        let trigger = TierTrigger::try_from(r.trigger).unwrap_or(TierTrigger::Unspecified);
        if trigger == TierTrigger::Unspecified {
            return Err(Error::invalid(
                "trigger",
                "must be PURCHASE or RECALCULATION",
            ));
        }
        let (plan, _) = self
            .plan(&r.merchant_id, r.program.as_ref(), at, false, &[])
            .await?;
        let amount = if r.purchase_amount.is_empty() {
            Decimal::ZERO
        } else {
            money::parse(
                &r.purchase_amount,
                plan.settings().money_scale,
                Sign::NonNegative,
            )
            .map_err(|e| Error::invalid("purchase_amount", e))?
        };
        tier::decide(
            plan.program(),
            plan.version(),
            customer,
            trigger,
            amount,
            at,
        )
    }

    async fn do_action(
        &self,
        r: &pb::EvaluateActionRequest,
    ) -> Result<pb::EvaluateActionResponse, Error> {
        let at = instant(&r.occurred_at, "occurred_at", Utc::now())?;
        let (plan, _) = self
            .plan(&r.merchant_id, r.program.as_ref(), at, false, &[])
            .await?;
        action::evaluate_action(plan.program(), plan.version(), r, at)
    }
}

fn reply<T>(result: Result<T, Error>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl EvaluationService for EvaluationApi {
    async fn evaluate(
        &self,
        r: Request<pb::EvaluateRequest>,
    ) -> Result<Response<pb::EvaluateResponse>, Status> {
        reply(self.do_evaluate(r.get_ref()).await)
    }
    async fn dry_run(
        &self,
        r: Request<pb::DryRunRequest>,
    ) -> Result<Response<pb::DryRunResponse>, Status> {
        reply(self.do_dry_run(r.get_ref()).await)
    }
    async fn compare_versions(
        &self,
        r: Request<pb::CompareVersionsRequest>,
    ) -> Result<Response<pb::CompareVersionsResponse>, Status> {
        reply(self.do_compare(r.get_ref()).await)
    }
    async fn simulate(
        &self,
        r: Request<Streaming<pb::SimulateRequest>>,
    ) -> Result<Response<pb::SimulateResponse>, Status> {
        self.do_simulate(r.into_inner()).await.map(Response::new)
    }
    async fn decide_tier(
        &self,
        r: Request<pb::DecideTierRequest>,
    ) -> Result<Response<pb::DecideTierResponse>, Status> {
        reply(self.do_decide_tier(r.get_ref()).await)
    }
    async fn evaluate_action(
        &self,
        r: Request<pb::EvaluateActionRequest>,
    ) -> Result<Response<pb::EvaluateActionResponse>, Status> {
        reply(self.do_action(r.get_ref()).await)
    }
}
