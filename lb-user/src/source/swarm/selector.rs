//! Swarm placement-constraint expressions, as `docker service create
//! --constraint` takes them: `node.labels.lb==proxy`,
//! `node.role!=manager`, several joined with `&&`.

use std::fmt;

use super::view::NodeInfo;

/// What a constraint looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Attribute {
    Label(String),
    Hostname,
    Role,
    Id,
}

/// One `ATTRIBUTE==VALUE` or `ATTRIBUTE!=VALUE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Constraint {
    attribute: Attribute,
    equal: bool,
    value: String,
}

/// All of its constraints must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSelector {
    text: String,
    constraints: Vec<Constraint>,
}

impl Constraint {
    /// Parses one constraint; errors say what is expected.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (lhs, equal, value) = if let Some((l, v)) = text.split_once("==") {
            (l, true, v)
        } else if let Some((l, v)) = text.split_once("!=") {
            (l, false, v)
        } else {
            return Err(format!("{text:?}: expected ATTRIBUTE==VALUE or ATTRIBUTE!=VALUE"));
        };
        let (lhs, value) = (lhs.trim(), value.trim());
        let attribute = match lhs {
            "node.hostname" => Attribute::Hostname,
            "node.role" => Attribute::Role,
            "node.id" => Attribute::Id,
            l => match l.strip_prefix("node.labels.") {
                Some(k) if !k.is_empty() => Attribute::Label(k.to_owned()),
                _ => return Err(format!("{lhs:?}: expected node.labels.KEY, node.hostname, node.role or node.id")),
            },
        };
        if value.is_empty() {
            return Err(format!("{text:?}: the value is empty"));
        }
        Ok(Self { attribute, equal, value: value.to_owned() })
    }

    /// The label key and value when this is `node.labels.KEY==VALUE`.
    pub fn label_equals(&self) -> Option<(&str, &str)> {
        match &self.attribute {
            Attribute::Label(k) if self.equal => Some((k, &self.value)),
            _ => None,
        }
    }

    /// The label key and value when this is `node.labels.KEY!=VALUE`.
    pub fn label_differs(&self) -> Option<(&str, &str)> {
        match &self.attribute {
            Attribute::Label(k) if !self.equal => Some((k, &self.value)),
            _ => None,
        }
    }

    fn holds(&self, n: &NodeInfo) -> bool {
        let actual = match &self.attribute {
            Attribute::Label(k) => n.labels.get(k).map(String::as_str),
            Attribute::Hostname => Some(n.hostname.as_str()),
            Attribute::Role => Some(n.role.as_str()),
            Attribute::Id => Some(n.id.as_str()),
        };
        // As in Swarm: `!=` holds for a node without the label.
        (actual == Some(self.value.as_str())) == self.equal
    }
}

impl NodeSelector {
    /// Parses `C1 && C2 && …`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let constraints = text.split("&&").map(Constraint::parse).collect::<Result<Vec<_>, _>>()?;
        Ok(Self { text: text.trim().to_owned(), constraints })
    }

    /// Whether `node` satisfies every constraint.
    pub fn matches(&self, node: &NodeInfo) -> bool {
        self.constraints.iter().all(|c| c.holds(node))
    }
}

impl fmt::Display for NodeSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(labels: &[(&str, &str)], role: &str) -> NodeInfo {
        NodeInfo {
            hostname: "n1".into(),
            role: role.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn selectors_match_like_swarm_constraints() {
        let s = NodeSelector::parse("node.labels.lb == proxy && node.role!=manager").unwrap();
        assert!(s.matches(&node(&[("lb", "proxy")], "worker")));
        assert!(!s.matches(&node(&[("lb", "proxy")], "manager")));
        assert!(!s.matches(&node(&[("lb", "other")], "worker")));
        assert!(!s.matches(&node(&[], "worker")));
        let not = NodeSelector::parse("node.labels.zone!=dmz").unwrap();
        assert!(not.matches(&node(&[], "worker")), "!= holds without the label");
        assert!(!not.matches(&node(&[("zone", "dmz")], "worker")));
        assert!(NodeSelector::parse("node.hostname==n1").unwrap().matches(&node(&[], "worker")));
    }

    #[test]
    fn bad_selectors_say_why() {
        for (text, want) in [
            ("lb=proxy", "expected ATTRIBUTE==VALUE"),
            ("node.labels.==x", "expected node.labels.KEY"),
            ("node.platform.os==linux", "expected node.labels.KEY"),
            ("node.labels.lb==", "the value is empty"),
            ("node.labels.lb==proxy &&", "expected ATTRIBUTE==VALUE"),
        ] {
            let e = NodeSelector::parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
