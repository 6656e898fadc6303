//! Crate-private macros.

/// `get_ref`, `get_mut` and `into_inner`, which every middleware service here gives (as
/// tower's own do), written once so their shape and docs cannot drift apart. Expands inside an
/// `impl` block of a type whose inner service is the field `inner: S`.
macro_rules! inner_accessors {
    () => {
        inner_accessors!(into_inner: "The inner service.");
    };
    (into_inner: $doc:literal) => {
        /// The inner service.
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        /// The inner service, mutably.
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }

        #[doc = $doc]
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}
