//! `#[policy]`: exports a Portcullis policy from an author's function or trait impl.
//!
//! Accepted forms (anything else is a compile error saying what to write):
//!
//! - `fn NAME(request: &ConnectionRequest) -> Decision`
//! - `fn NAME(request: &ConnectionRequest, config: &MyConfig) -> Decision`, where
//!   `MyConfig: Deserialize` is parsed from the module's configuration file
//! - either function returning `Result<Decision, E>` with `E: Display`: an error
//!   blocks with its text, so the function can use `?`
//! - either function with `#[policy(check_channel = CHECK)]`, where `CHECK` is
//!   `fn(&ConnectionRequest, &ChannelRequest) -> ChannelVerdict` (with a third
//!   argument `&MyConfig` when the function takes one)
//! - `impl Policy for MyPolicy { ... }`, where `MyPolicy: Deserialize` is the configuration

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{
    Expr, FnArg, Item, ItemFn, ItemImpl, MetaNameValue, ReturnType, Type, parse_macro_input,
};

const USAGE: &str = "`#[policy]` goes on `fn decide(request: &ConnectionRequest) -> Decision`, \
     on `fn decide(request: &ConnectionRequest, config: &MyConfig) -> Decision`, \
     or on `impl Policy for MyPolicy { ... }`";

/// Exports a policy. See the crate documentation for the accepted forms.
#[proc_macro_attribute]
pub fn policy(attr: TokenStream, item: TokenStream) -> TokenStream {
    let check = if attr.is_empty() {
        None
    } else {
        let attr2 = TokenStream2::from(attr.clone());
        match syn::parse::<MetaNameValue>(attr) {
            Ok(nv) if nv.path.is_ident("check_channel") => Some(nv.value),
            _ => {
                return error(
                    attr2.span(),
                    "`#[policy]` takes no arguments but `check_channel = FUNCTION`; write \
                     `#[policy]` or `#[policy(check_channel = check)]`",
                );
            }
        }
    };
    let item = parse_macro_input!(item as Item);
    let expanded = match item {
        Item::Fn(f) => from_fn(f, check),
        Item::Impl(i) if check.is_some() => Err(syn::Error::new(
            i.self_ty.span(),
            "`check_channel = ...` is for a policy function; in `impl Policy`, write \
             `fn check_channel(&self, request, channel)` in the impl",
        )),
        Item::Impl(i) => from_impl(i),
        other => Err(syn::Error::new(other.span(), USAGE)),
    };
    match expanded {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn error(span: Span, msg: &str) -> TokenStream {
    syn::Error::new(span, msg).to_compile_error().into()
}

fn export(ty: TokenStream2) -> TokenStream2 {
    quote! {
        #[doc(hidden)]
        type __PortcullisPolicyExport = ::portcullis_policy::Export<#ty>;
        ::portcullis_policy::bindings::export_policy!(
            __PortcullisPolicyExport with_types_in ::portcullis_policy::bindings
        );
    }
}

fn from_impl(item: ItemImpl) -> syn::Result<TokenStream2> {
    let is_policy = item
        .trait_
        .as_ref()
        .and_then(|(bang, path, _)| bang.is_none().then_some(path))
        .and_then(|path| path.segments.last())
        .is_some_and(|seg| seg.ident == "Policy");
    if !is_policy {
        return Err(syn::Error::new(
            item.self_ty.span(),
            "`#[policy]` on an impl block needs `impl Policy for MyPolicy { ... }`",
        ));
    }
    if !item.generics.params.is_empty() {
        return Err(syn::Error::new(
            item.generics.span(),
            "a policy type cannot be generic: the module exports exactly one policy",
        ));
    }
    let self_ty = &item.self_ty;
    let export = export(quote!(#self_ty));
    Ok(quote! { #item #export })
}

fn reference_target(arg: &FnArg, what: &str) -> syn::Result<Type> {
    match arg {
        FnArg::Typed(pat) => match &*pat.ty {
            Type::Reference(r) if r.mutability.is_none() => Ok((*r.elem).clone()),
            other => Err(syn::Error::new(
                other.span(),
                format!(
                    "the {what} must be taken by shared reference, e.g. `&{}`",
                    quote!(#other)
                ),
            )),
        },
        FnArg::Receiver(r) => Err(syn::Error::new(
            r.span(),
            "a `#[policy]` function takes no `self`; to use `self`, write `impl Policy for MyPolicy`",
        )),
    }
}

fn from_fn(f: ItemFn, check: Option<Expr>) -> syn::Result<TokenStream2> {
    let sig = &f.sig;
    if let Some(a) = &sig.asyncness {
        return Err(syn::Error::new(
            a.span(),
            "a policy function cannot be `async`; remove `async`",
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "a policy function cannot be generic",
        ));
    }
    if matches!(sig.output, ReturnType::Default) {
        return Err(syn::Error::new(
            sig.paren_token.span.close(),
            "a policy function returns a decision: add `-> Decision`",
        ));
    }
    let name = &sig.ident;
    let args: Vec<&FnArg> = sig.inputs.iter().collect();
    let (config_ty, call, check_call) = match args.as_slice() {
        [request] => {
            reference_target(request, "request")?;
            (
                quote!(::portcullis_policy::NoConfig),
                quote!(#name(request)),
                check.map(|c| quote!(#c(request, channel))),
            )
        }
        [request, config] => {
            reference_target(request, "request")?;
            let ty = reference_target(config, "configuration")?;
            (
                quote!(#ty),
                quote!(#name(request, &self.0)),
                check.map(|c| quote!(#c(request, channel, &self.0))),
            )
        }
        _ => return Err(syn::Error::new(sig.inputs.span(), USAGE)),
    };
    let check_fn = check_call.map(|call| {
        quote! {
            fn check_channel(
                &self,
                request: &::portcullis_policy::ConnectionRequest<'_>,
                channel: &::portcullis_policy::ChannelRequest,
            ) -> ::portcullis_policy::ChannelVerdict {
                #call
            }
        }
    });
    let span = sig.ident.span();
    let wrapper = quote_spanned! {span=>
        #[doc(hidden)]
        #[allow(dead_code)]
        struct __PortcullisFnPolicy(#config_ty);

        impl<'de> ::portcullis_policy::serde::Deserialize<'de> for __PortcullisFnPolicy {
            fn deserialize<D>(deserializer: D) -> ::core::result::Result<Self, D::Error>
            where
                D: ::portcullis_policy::serde::Deserializer<'de>,
            {
                <#config_ty as ::portcullis_policy::serde::Deserialize<'de>>::deserialize(deserializer)
                    .map(__PortcullisFnPolicy)
            }
        }

        impl ::portcullis_policy::Policy for __PortcullisFnPolicy {
            fn decide(
                &self,
                request: &::portcullis_policy::ConnectionRequest<'_>,
            ) -> ::portcullis_policy::Decision {
                ::portcullis_policy::IntoDecision::into_decision(#call)
            }

            #check_fn
        }
    };
    let export = export(quote!(__PortcullisFnPolicy));
    Ok(quote! { #f #wrapper #export })
}
