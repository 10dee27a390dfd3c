#![allow(dead_code)]

mod on_a_struct {
    use portcullis_policy::prelude::*;

    #[policy]
    struct NotAPolicy;
}

mod async_fn {
    use portcullis_policy::prelude::*;

    #[policy]
    async fn decide(request: &ConnectionRequest) -> Decision {
        Decision::allow([request.login.clone()])
    }
}

mod no_return_type {
    use portcullis_policy::prelude::*;

    #[policy]
    fn decide(request: &ConnectionRequest) {
        let _ = request;
    }
}

mod by_value {
    use portcullis_policy::prelude::*;

    #[policy]
    fn decide(request: ConnectionRequest) -> Decision {
        Decision::allow([request.login])
    }
}

mod with_arguments {
    use portcullis_policy::prelude::*;

    #[policy(strict)]
    fn decide(request: &ConnectionRequest) -> Decision {
        Decision::allow([request.login.clone()])
    }
}

mod other_trait {
    use portcullis_policy::prelude::*;

    struct P;

    #[policy]
    impl Default for P {
        fn default() -> Self {
            P
        }
    }
}

mod three_arguments {
    use portcullis_policy::prelude::*;

    #[policy]
    fn decide(request: &ConnectionRequest, a: &NoConfig, b: &NoConfig) -> Decision {
        Decision::allow([request.login.clone()])
    }
}
