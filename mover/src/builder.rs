//! `with_*` setters for the API's `#[non_exhaustive]` options: an embedder
//! starts from `Default` (or a constructor) and sets what it needs, so a
//! field added in a later release breaks no caller. The fields stay `pub`
//! to read (and to assign on a value one already has).

/// `setters!(Type { with_name => field: FieldType, ... })` writes one
/// `#[must_use] pub fn with_name(self, v) -> Self` per field.
macro_rules! setters {
    ($ty:ty { $($with:ident => $field:ident: $fty:ty),* $(,)? }) => {
        impl $ty {
            $(
                #[doc = concat!("Sets [`", stringify!($field), "`](Self::", stringify!($field), ").")]
                #[must_use]
                pub fn $with(mut self, value: $fty) -> Self {
                    self.$field = value;
                    self
                }
            )*
        }
    };
}

pub(crate) use setters;
