//! The MQTT topic names of one unit (see `docs/mqtt.md`). Tenant and unit ids are checked by
//! the config to be topic-safe; no personal data ever goes into a topic.

/// Every topic one unit publishes or subscribes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// `dt/callbox/<tenant>/<unit>/summary`: call summaries (from the outbox).
    pub summary: String,
    /// `dt/callbox/<tenant>/<unit>/event`: call and box events, never transcript text.
    pub event: String,
    /// `dt/callbox/<tenant>/<unit>/health`: retained status; the last will says offline.
    pub health: String,
    /// `cmd/callbox/<tenant>/<unit>/req`: commands for this unit.
    pub request: String,
    /// `cmd/callbox/<tenant>/all/req`: commands for every unit of the tenant.
    pub request_all: String,
    /// `cmd/callbox/<tenant>/<unit>/res`: acknowledgements of commands.
    pub response: String,
    /// `cfg/callbox/<tenant>/<unit>`: the retained desired script manifest.
    pub desired: String,
    /// `cfg/callbox/<tenant>/<unit>/reported`: retained, what the unit runs.
    pub reported: String,
}

impl Topics {
    pub fn new(tenant: &str, unit: &str) -> Topics {
        let data = format!("dt/callbox/{tenant}/{unit}");
        Topics {
            summary: format!("{data}/summary"),
            event: format!("{data}/event"),
            health: format!("{data}/health"),
            request: format!("cmd/callbox/{tenant}/{unit}/req"),
            request_all: format!("cmd/callbox/{tenant}/all/req"),
            response: format!("cmd/callbox/{tenant}/{unit}/res"),
            desired: format!("cfg/callbox/{tenant}/{unit}"),
            reported: format!("cfg/callbox/{tenant}/{unit}/reported"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_topic_matches_the_call_pipeline() {
        let t = Topics::new("acme", "box-1");
        assert_eq!(t.summary, crate::call::summary_topic("acme", "box-1"));
        assert_eq!(t.health, "dt/callbox/acme/box-1/health");
        assert_eq!(t.request_all, "cmd/callbox/acme/all/req");
        assert_eq!(t.response, "cmd/callbox/acme/box-1/res");
    }
}
