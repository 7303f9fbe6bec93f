//! The discovery steps of the Server-Server API, as homeport names them.

use std::fmt;

/// Which rule of "Resolving server names" decided (or failed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// 1: the server name is an IP literal.
    IpLiteral,
    /// 2: a hostname with an explicit port.
    ExplicitPort,
    /// 3: the `.well-known` lookup itself (only named while it runs).
    WellKnown,
    /// 3.1: `m.server` is an IP literal.
    DelegatedIp,
    /// 3.2: `m.server` has an explicit port.
    DelegatedPort,
    /// 3.3: `_matrix-fed._tcp.<delegated>` SRV.
    DelegatedSrv,
    /// 3.4: `_matrix._tcp.<delegated>` SRV (deprecated).
    DelegatedLegacySrv,
    /// 3.5: the delegated host on 8448.
    DelegatedDefault,
    /// 4: `_matrix-fed._tcp.<hostname>` SRV.
    Srv,
    /// 5: `_matrix._tcp.<hostname>` SRV (deprecated).
    LegacySrv,
    /// 6: the hostname on 8448.
    Default,
}

impl Step {
    /// The step number as the JSON contract writes it (`"3.3"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Step::IpLiteral => "1",
            Step::ExplicitPort => "2",
            Step::WellKnown => "3",
            Step::DelegatedIp => "3.1",
            Step::DelegatedPort => "3.2",
            Step::DelegatedSrv => "3.3",
            Step::DelegatedLegacySrv => "3.4",
            Step::DelegatedDefault => "3.5",
            Step::Srv => "4",
            Step::LegacySrv => "5",
            Step::Default => "6",
        }
    }

    /// A short description of the rule.
    pub fn rule(self) -> &'static str {
        match self {
            Step::IpLiteral => {
                "the server name is an IP literal: connect to it (port given or 8448), Host is the name verbatim, no SNI"
            }
            Step::ExplicitPort => {
                "the server name has an explicit port: connect to the hostname's addresses on that port, Host is hostname:port"
            }
            Step::WellKnown => "no port: fetch https://<hostname>/.well-known/matrix/server",
            Step::DelegatedIp => {
                "m.server is an IP literal: connect to it (its port or 8448), Host is m.server verbatim, no SNI"
            }
            Step::DelegatedPort => {
                "m.server has a port: connect to the delegated host on that port, Host is m.server verbatim"
            }
            Step::DelegatedSrv => {
                "m.server has no port and _matrix-fed._tcp.<delegated> exists: connect to the SRV targets, Host and certificate name are the delegated host"
            }
            Step::DelegatedLegacySrv => {
                "no _matrix-fed record, but the deprecated _matrix._tcp.<delegated> exists: connect to its targets, Host and certificate name are the delegated host"
            }
            Step::DelegatedDefault => {
                "m.server has no port and no SRV record: connect to the delegated host on 8448"
            }
            Step::Srv => {
                "no .well-known delegation and _matrix-fed._tcp.<hostname> exists: connect to the SRV targets, Host and certificate name are the hostname"
            }
            Step::LegacySrv => {
                "no .well-known, no _matrix-fed record, but the deprecated _matrix._tcp.<hostname> exists: connect to its targets, Host and certificate name are the hostname"
            }
            Step::Default => {
                "no .well-known delegation and no SRV record: connect to the hostname on 8448"
            }
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Step {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}
