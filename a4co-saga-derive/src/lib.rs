//! `#[derive(State)]` for [a4co-saga](https://docs.rs/a4co-saga): implements
//! `a4co_saga::State` for an enum of unit variants. Use it through `a4co_saga::State`:
//!
//! - `ALL` lists the variants in declaration order;
//! - `name()` is the name serde gives the variant (its `#[serde(rename_all = "..")]` or
//!   `#[serde(rename = "..")]`), so diagrams, logs and stored records agree;
//! - `#[state(final)]` marks a state the saga ends in, and
//!   `#[state(final, outcome = "failed")]` one that ends it failed (`completed`, the
//!   default, or `failed`; a failed instance that sent compensations counts as
//!   compensated).
//!
//! An enum with no final state, a variant with fields, or an unknown `state` or rename
//! rule is a compile error naming what to fix.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as Tokens};
use quote::quote;
use syn::meta::ParseNestedMeta;
use syn::{Attribute, Data, DeriveInput, Fields, Ident, LitStr, parse_macro_input};

/// Implements `a4co_saga::State`; see the crate's documentation.
#[proc_macro_derive(State, attributes(state))]
pub fn derive_state(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// One variant, as the derive reads it.
struct Variant {
    ident: Ident,
    name: String,
    is_final: bool,
    failed: bool,
}

fn expand(input: &DeriveInput) -> syn::Result<Tokens> {
    let Data::Enum(data) = &input.data else {
        return Err(syn::Error::new_spanned(
            &input.ident,
            "#[derive(State)] is for an enum of unit variants, one per state",
        ));
    };
    let rule = serde_string(&input.attrs, "rename_all")?;
    let mut variants = Vec::new();
    for v in &data.variants {
        if !matches!(v.fields, Fields::Unit) {
            return Err(syn::Error::new_spanned(
                v,
                "a saga state is a unit variant: keep what the saga knows in its data",
            ));
        }
        let name = match serde_string(&v.attrs, "rename")? {
            Some(name) => name.value(),
            None => rename(&v.ident.to_string(), rule.as_ref())?,
        };
        let (is_final, failed) = state_attrs(&v.attrs)?;
        variants.push(Variant {
            ident: v.ident.clone(),
            name,
            is_final,
            failed,
        });
    }
    if !variants.iter().any(|v| v.is_final) {
        return Err(syn::Error::new_spanned(
            &input.ident,
            "no state is final: mark the states a saga ends in with #[state(final)]",
        ));
    }
    let ident = &input.ident;
    let (impl_generics, type_generics, where_clause) = input.generics.split_for_impl();
    let all = variants.iter().map(|v| &v.ident);
    let names = variants
        .iter()
        .map(|Variant { ident, name, .. }| quote!(Self::#ident => #name));
    let finals = variants.iter().filter(|v| v.is_final).map(|v| &v.ident);
    let failed: Vec<&Ident> = variants
        .iter()
        .filter(|v| v.failed)
        .map(|v| &v.ident)
        .collect();
    let outcome = (!failed.is_empty()).then(|| {
        quote! {
            fn outcome(self) -> ::a4co_saga::Outcome {
                match self {
                    #(Self::#failed)|* => ::a4co_saga::Outcome::Failed,
                    _ => ::a4co_saga::Outcome::Completed,
                }
            }
        }
    });
    Ok(quote! {
        #[automatically_derived]
        impl #impl_generics ::a4co_saga::State for #ident #type_generics #where_clause {
            const ALL: &'static [Self] = &[#(Self::#all),*];
            fn name(self) -> &'static str {
                match self {
                    #(#names,)*
                }
            }
            fn is_final(self) -> bool {
                matches!(self, #(Self::#finals)|*)
            }
            #outcome
        }
    })
}

/// The string value of `#[serde(key = "..")]` among `attrs` (for `rename_all`, also the
/// `serialize` half of `rename_all(serialize = "..", deserialize = "..")`).
fn serde_string(attrs: &[Attribute], key: &str) -> syn::Result<Option<LitStr>> {
    let mut found = None;
    for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident(key) {
                if meta.input.peek(syn::Token![=]) {
                    found = Some(meta.value()?.parse::<LitStr>()?);
                } else {
                    meta.parse_nested_meta(|half| {
                        if half.path.is_ident("serialize") {
                            found = Some(half.value()?.parse::<LitStr>()?);
                        } else {
                            skip(&half)?;
                        }
                        Ok(())
                    })?;
                }
                Ok(())
            } else {
                skip(&meta)
            }
        })?;
    }
    Ok(found)
}

/// Passes over a serde setting the derive does not read (`tag = ".."`, `default`, ...).
fn skip(meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(syn::Token![=]) {
        meta.value()?.parse::<syn::Lit>()?;
    } else if meta.input.peek(syn::token::Paren) {
        meta.parse_nested_meta(|inner| skip(&inner))?;
    }
    Ok(())
}

/// `#[state(final)]` and `#[state(final, outcome = "failed")]`: (final, failed).
fn state_attrs(attrs: &[Attribute]) -> syn::Result<(bool, bool)> {
    let (mut is_final, mut failed) = (false, false);
    for attr in attrs.iter().filter(|a| a.path().is_ident("state")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("final") {
                is_final = true;
            } else if meta.path.is_ident("outcome") {
                let outcome = meta.value()?.parse::<LitStr>()?;
                failed = match outcome.value().as_str() {
                    "failed" => true,
                    "completed" => false,
                    _ => {
                        return Err(syn::Error::new_spanned(
                            outcome,
                            "the outcome of a final state is \"completed\" or \"failed\"",
                        ));
                    }
                };
            } else {
                return Err(meta.error("expected `final` or `outcome = \"failed\"`"));
            }
            Ok(())
        })?;
        if failed && !is_final {
            return Err(syn::Error::new_spanned(
                attr,
                "only a final state has an outcome: #[state(final, outcome = \"failed\")]",
            ));
        }
    }
    Ok((is_final, failed))
}

/// The variant's name under serde's `rename_all` rule (none: the variant as written).
fn rename(variant: &str, rule: Option<&LitStr>) -> syn::Result<String> {
    let Some(rule) = rule else {
        return Ok(variant.to_owned());
    };
    let snake = || {
        let mut out = String::new();
        for (i, c) in variant.char_indices() {
            if i > 0 && c.is_uppercase() {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        }
        out
    };
    Ok(match rule.value().as_str() {
        "lowercase" => variant.to_ascii_lowercase(),
        "UPPERCASE" => variant.to_ascii_uppercase(),
        "PascalCase" => variant.to_owned(),
        "camelCase" => {
            let mut chars = variant.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_lowercase().to_string() + chars.as_str()
            })
        }
        "snake_case" => snake(),
        "SCREAMING_SNAKE_CASE" => snake().to_ascii_uppercase(),
        "kebab-case" => snake().replace('_', "-"),
        "SCREAMING-KEBAB-CASE" => snake().replace('_', "-").to_ascii_uppercase(),
        other => {
            return Err(syn::Error::new(
                Span::call_site(),
                format!("unknown serde rename_all rule {other:?}"),
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(variant: &str, rule: &str) -> String {
        rename(variant, Some(&LitStr::new(rule, Span::call_site()))).unwrap()
    }

    #[test]
    fn names_follow_serdes_rules() {
        assert_eq!(
            named("AwaitingLatePayment", "kebab-case"),
            "awaiting-late-payment"
        );
        assert_eq!(
            named("AwaitingLatePayment", "snake_case"),
            "awaiting_late_payment"
        );
        assert_eq!(
            named("AwaitingLatePayment", "camelCase"),
            "awaitingLatePayment"
        );
        assert_eq!(
            named("AwaitingLatePayment", "SCREAMING_SNAKE_CASE"),
            "AWAITING_LATE_PAYMENT"
        );
        assert_eq!(named("Paid", "lowercase"), "paid");
        assert_eq!(rename("Paid", None).unwrap(), "Paid");
    }

    #[test]
    fn an_enum_without_a_final_state_is_refused() {
        let input: DeriveInput = syn::parse_quote! {
            #[serde(rename_all = "kebab-case")]
            enum Phase { Waiting, Done }
        };
        let error = expand(&input).err().unwrap().to_string();
        assert!(error.contains("#[state(final)]"), "{error}");
    }

    #[test]
    fn names_finals_and_failures_are_read() {
        let input: DeriveInput = syn::parse_quote! {
            #[derive(Clone)]
            #[serde(tag = "x", rename_all = "kebab-case")]
            enum Phase {
                Waiting,
                #[state(final)]
                Done,
                #[serde(rename = "gave-up")]
                #[state(final, outcome = "failed")]
                Gave,
            }
        };
        let code = expand(&input).unwrap().to_string();
        assert!(code.contains("\"waiting\""), "{code}");
        assert!(code.contains("\"gave-up\""), "{code}");
        assert!(code.contains("Outcome :: Failed"), "{code}");
    }

    #[test]
    fn a_variant_with_fields_is_refused() {
        let input: DeriveInput = syn::parse_quote! {
            enum Phase { Waiting { since: u64 }, #[state(final)] Done }
        };
        assert!(expand(&input).is_err());
    }
}
