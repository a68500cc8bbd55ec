//! The adapter's errors, and their words in the audit trail.
//!
//! Owns the error enum. It must not hide the API server's own message: operators act
//! on it (RBAC, admission webhooks, quotas).

use rampart_core::ports::PortError;

/// What went wrong talking to Kubernetes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable kubeconfig or in-cluster configuration.
    #[error("no Kubernetes configuration: {0}")]
    Config(String),
    /// The API server refused or failed a request, or could not be reached.
    #[error("{action}: {source}")]
    Api {
        /// What rampart was doing.
        action: String,
        /// The client's error, with the server's status when there was one.
        #[source]
        source: Box<kube::Error>,
    },
    /// An object the policy names does not exist.
    #[error("{kind} `{name}` not found in namespace `{namespace}`")]
    NotFound {
        /// Deployment, Service or HTTPRoute.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The namespace.
        namespace: String,
    },
    /// An object is not the shape rampart needs (a label, a container, a backendRef).
    #[error("{0}")]
    Shape(String),
    /// A Deployment did not become ready, or its rollout failed.
    #[error("{0}")]
    NotReady(String),
    /// A weight the traffic mode cannot make.
    #[error("{0}")]
    Weight(String),
    /// A promotion stopped half-way: what failed, and where traffic is now.
    #[error("{source}; {traffic}")]
    Promotion {
        /// The step that failed.
        #[source]
        source: Box<Error>,
        /// Where traffic is, in words.
        traffic: String,
    },
}

impl Error {
    pub(crate) fn api(action: String, source: kube::Error) -> Error {
        Error::Api {
            action,
            source: Box::new(source),
        }
    }
}

impl From<Error> for PortError {
    fn from(e: Error) -> Self {
        PortError::new(e)
    }
}
