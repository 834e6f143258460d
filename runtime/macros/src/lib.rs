//! `#[filament::remote]` and `#[filament::actor]`: turn functions and types into remote tasks and
//! actors, registered under their Rust paths in every process of the program.
//!
//! Use them through the `filament` crate, which re-exports them.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote};
use syn::{
    FnArg, Ident, ImplItem, ImplItemFn, ItemFn, ItemImpl, ItemStruct, Pat, ReturnType, Type,
    parse_macro_input, spanned::Spanned,
};

/// Makes a function remote: `f::remote(args…)` submits it to a worker and returns an `ObjectRef`.
///
/// ```no_run
/// #[filament::remote]
/// fn add(a: i64, b: i64) -> i64 { a + b }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let _runtime = filament::init(filament::Config::default())?;
/// let sum = add::remote(1, 2);          // runs in a worker
/// assert_eq!(filament::get(&sum)?, 3);
/// let again = add::remote(&sum, 10);    // an ObjectRef as an argument: runs once `sum` exists
/// # Ok(())
/// # }
/// ```
///
/// Arguments and the result may be of any serde type. The function itself stays callable locally.
///
/// Options, as Ray's: `#[filament::remote(max_retries = 5, retry_exceptions = true)]`.
/// `max_retries` (default 3) is how many times the task runs again when its worker dies before it
/// finished; with `retry_exceptions` (default `false`) a panic is retried too. Each attempt is its
/// own CONSUMER span in the task's trace; retries carry `filament.attempt`.
#[proc_macro_attribute]
pub fn remote(attr: TokenStream, item: TokenStream) -> TokenStream {
    let options = match RemoteOptions::parse(attr.into()) {
        Ok(options) => options,
        Err(error) => return error.to_compile_error().into(),
    };
    let function = parse_macro_input!(item as ItemFn);
    match remote_function(function, &options) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

/// The options of `#[filament::remote(…)]`.
struct RemoteOptions {
    max_retries: u32,
    retry_exceptions: bool,
}

impl RemoteOptions {
    /// Ray's default: a task whose worker died runs up to 3 more times; a panic is not retried.
    const DEFAULT_MAX_RETRIES: u32 = 3;

    fn parse(attr: TokenStream2) -> syn::Result<RemoteOptions> {
        let mut options = RemoteOptions {
            max_retries: Self::DEFAULT_MAX_RETRIES,
            retry_exceptions: false,
        };
        let parser = syn::meta::parser(|meta| {
            if meta.path.is_ident("max_retries") {
                let value: syn::LitInt = meta.value()?.parse()?;
                options.max_retries = value.base10_parse()?;
                Ok(())
            } else if meta.path.is_ident("retry_exceptions") {
                let value: syn::LitBool = meta.value()?.parse()?;
                options.retry_exceptions = value.value;
                Ok(())
            } else {
                Err(meta.error(
                    "unknown option of #[filament::remote]: it takes `max_retries = N` and \
                     `retry_exceptions = true|false`",
                ))
            }
        });
        syn::parse::Parser::parse2(parser, attr)?;
        Ok(options)
    }
}

/// Makes a type an actor. Put it on the struct (which makes the handle type `<Name>Handle`) and on
/// one impl block (whose `new` becomes `Name::remote(…)` and whose `&self`/`&mut self` methods become
/// methods of the handle returning `ObjectRef`s).
///
/// ```no_run
/// #[filament::actor]
/// struct Counter { n: i64 }
///
/// #[filament::actor]
/// impl Counter {
///     fn new(start: i64) -> Self { Counter { n: start } }
///     fn incr(&mut self, by: i64) -> i64 { self.n += by; self.n }
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let _runtime = filament::init(filament::Config::default())?;
/// let counter = Counter::remote(0);     // created in a worker process of its own
/// let one = counter.incr(1);            // calls run in submission order
/// assert_eq!(filament::get(&one)?, 1);
/// # Ok(())
/// # }
/// ```
///
/// Options, as Ray's, on the impl block: `#[filament::actor(max_restarts = 1, max_task_retries = 2)]`.
/// `max_restarts` (default 0) is how many times the constructor runs again, in a new process, when
/// the actor's process dies; calls made meanwhile wait for it. `max_task_retries` (default 0) is
/// how many times a call in flight when the process died runs again on the restarted actor; past
/// it, such a call fails with `ActorDied`.
#[proc_macro_attribute]
pub fn actor(attr: TokenStream, item: TokenStream) -> TokenStream {
    let attr = TokenStream2::from(attr);
    let parsed = if let Ok(item) = syn::parse::<ItemStruct>(item.clone()) {
        if attr.is_empty() {
            actor_struct(item)
        } else {
            Err(syn::Error::new(
                attr.span(),
                "#[filament::actor] takes its options on the impl block, not on the struct",
            ))
        }
    } else if let Ok(item) = syn::parse::<ItemImpl>(item) {
        ActorOptions::parse(attr).and_then(|options| actor_impl(item, &options))
    } else {
        Err(syn::Error::new(
            Span::call_site(),
            "#[filament::actor] goes on a struct and on its impl block",
        ))
    };
    match parsed {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

/// The options of `#[filament::actor(…)]` on an impl block.
struct ActorOptions {
    max_restarts: u32,
    max_task_retries: u32,
}

impl ActorOptions {
    fn parse(attr: TokenStream2) -> syn::Result<ActorOptions> {
        let mut options = ActorOptions {
            max_restarts: 0,
            max_task_retries: 0,
        };
        let parser = syn::meta::parser(|meta| {
            let field = if meta.path.is_ident("max_restarts") {
                &mut options.max_restarts
            } else if meta.path.is_ident("max_task_retries") {
                &mut options.max_task_retries
            } else {
                return Err(meta.error(
                    "unknown option of #[filament::actor]: it takes `max_restarts = N` and \
                     `max_task_retries = N`",
                ));
            };
            let value: syn::LitInt = meta.value()?.parse()?;
            *field = value.base10_parse()?;
            Ok(())
        });
        syn::parse::Parser::parse2(parser, attr)?;
        Ok(options)
    }
}

/// The names and types of a function's arguments, refusing patterns and `self`.
fn arguments<'a>(inputs: impl Iterator<Item = &'a FnArg>) -> syn::Result<(Vec<Ident>, Vec<Type>)> {
    let mut names = Vec::new();
    let mut types = Vec::new();
    for (index, input) in inputs.enumerate() {
        match input {
            FnArg::Typed(typed) => {
                let name = match &*typed.pat {
                    Pat::Ident(pat) => pat.ident.clone(),
                    _ => format_ident!("__filament_arg{index}"),
                };
                names.push(format_ident!("__filament_{}", name));
                types.push((*typed.ty).clone());
            }
            FnArg::Receiver(receiver) => {
                return Err(syn::Error::new(
                    receiver.span(),
                    "a remote function cannot take `self`",
                ));
            }
        }
    }
    Ok((names, types))
}

fn return_type(output: &ReturnType) -> Type {
    match output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, ty) => (**ty).clone(),
    }
}

fn check_plain(sig: &syn::Signature) -> syn::Result<()> {
    if let Some(asyncness) = sig.asyncness {
        return Err(syn::Error::new(
            asyncness.span(),
            "remote functions and actor methods cannot be async yet",
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "remote functions and actor methods cannot be generic: every process must find them by name",
        ));
    }
    Ok(())
}

fn remote_function(function: ItemFn, options: &RemoteOptions) -> syn::Result<TokenStream2> {
    let max_retries = options.max_retries;
    let retry_exceptions = options.retry_exceptions;
    check_plain(&function.sig)?;
    let vis = &function.vis;
    let name = &function.sig.ident;
    let (args, types) = arguments(function.sig.inputs.iter())?;
    let output = return_type(&function.sig.output);
    let doc = format!("The remote form of [`{name}()`](fn@{name}): `{name}::remote(…)`.");
    Ok(quote! {
        #function

        #[doc = #doc]
        #[allow(non_snake_case, unused_imports)]
        #vis mod #name {
            use super::*;

            /// The function's stable id in every process: its Rust path.
            pub const ID: &str = ::core::module_path!();

            /// Submits the function to a worker; the result arrives in the returned `ObjectRef`.
            /// Arguments are values or `ObjectRef`s of the parameter types.
            pub fn remote(#(#args: impl ::filament::IntoArg<#types>),*) -> ::filament::ObjectRef<#output> {
                ::filament::__private::submit_function(
                    ID,
                    ::std::vec![#(::filament::IntoArg::into_arg(#args)),*],
                    #max_retries,
                    #retry_exceptions,
                )
            }

            fn __filament_invoke(
                mut args: ::filament::__private::Args<'_>,
            ) -> ::filament::__private::InvokeResult {
                #( let #args: #types = args.next()?; )*
                args.finish()?;
                ::filament::__private::encode(&super::#name(#(#args),*))
            }

            ::filament::__private::inventory::submit! {
                ::filament::__private::RemoteFunction { id: ID, invoke: __filament_invoke }
            }
        }
    })
}

fn handle_ident(type_name: &Ident) -> Ident {
    format_ident!("{}Handle", type_name)
}

fn actor_struct(item: ItemStruct) -> syn::Result<TokenStream2> {
    if !item.generics.params.is_empty() {
        return Err(syn::Error::new(
            item.generics.span(),
            "an actor type cannot be generic: every process must find it by name",
        ));
    }
    let vis = &item.vis;
    let name = &item.ident;
    let handle = handle_ident(name);
    let doc = format!(
        "A handle to a [`{name}`] actor living in a worker process: its methods submit calls, run in submission order. Clone it, or pass it to tasks and other actors."
    );
    Ok(quote! {
        #item

        #[doc = #doc]
        #[derive(Clone, Debug, ::filament::__private::serde::Serialize, ::filament::__private::serde::Deserialize)]
        #[serde(crate = "::filament::__private::serde", transparent)]
        #vis struct #handle {
            inner: ::filament::ActorHandle,
        }

        impl #handle {
            /// The untyped handle: the actor's id and class.
            pub fn actor(&self) -> &::filament::ActorHandle {
                &self.inner
            }
        }
    })
}

fn actor_impl(item: ItemImpl, options: &ActorOptions) -> syn::Result<TokenStream2> {
    let max_restarts = options.max_restarts;
    let max_task_retries = options.max_task_retries;
    if !item.generics.params.is_empty() || item.trait_.is_some() {
        return Err(syn::Error::new(
            item.span(),
            "#[filament::actor] goes on the type's own (inherent, non-generic) impl block",
        ));
    }
    let Type::Path(self_path) = &*item.self_ty else {
        return Err(syn::Error::new(
            item.self_ty.span(),
            "expected the actor's type name",
        ));
    };
    let type_name = self_path
        .path
        .segments
        .last()
        .map(|s| s.ident.clone())
        .ok_or_else(|| syn::Error::new(self_path.span(), "expected the actor's type name"))?;
    let self_ty = &item.self_ty;
    let handle = handle_ident(&type_name);
    let class_name = type_name.to_string();

    let methods: Vec<&ImplItemFn> = item
        .items
        .iter()
        .filter_map(|i| match i {
            ImplItem::Fn(f) => Some(f),
            _ => None,
        })
        .collect();
    let constructor = methods
        .iter()
        .find(|m| m.sig.ident == "new" && m.sig.receiver().is_none())
        .ok_or_else(|| {
            syn::Error::new(
                item.span(),
                "an actor's impl block needs a constructor `fn new(…) -> Self`",
            )
        })?;
    check_plain(&constructor.sig)?;
    let (ctor_args, ctor_types) = arguments(constructor.sig.inputs.iter())?;
    let ctor_vis = &constructor.vis;

    let mut handle_methods = Vec::new();
    let mut registrations = Vec::new();
    for method in methods.iter().filter(|m| m.sig.receiver().is_some()) {
        check_plain(&method.sig)?;
        let receiver = method.sig.receiver().expect("filtered on receivers");
        if receiver.reference.is_none() {
            return Err(syn::Error::new(
                receiver.span(),
                "actor methods take `&self` or `&mut self`",
            ));
        }
        let name = &method.sig.ident;
        let vis = &method.vis;
        let (args, types) = arguments(method.sig.inputs.iter().skip(1))?;
        let output = return_type(&method.sig.output);
        let method_name = name.to_string();
        let call = format_ident!("__filament_call_{}", name);
        let doc = format!("Calls [`{class_name}::{method_name}`] on the actor.");
        handle_methods.push(quote! {
            #[doc = #doc]
            #vis fn #name(&self, #(#args: impl ::filament::IntoArg<#types>),*) -> ::filament::ObjectRef<#output> {
                self.inner.call(
                    ::core::concat!(::core::module_path!(), "::", #class_name, "::", #method_name),
                    #method_name,
                    ::std::vec![#(::filament::IntoArg::into_arg(#args)),*],
                )
            }
        });
        registrations.push(quote! {
            fn #call(
                this: &mut (dyn ::core::any::Any + ::core::marker::Send),
                mut args: ::filament::__private::Args<'_>,
            ) -> ::filament::__private::InvokeResult {
                let this = ::filament::__private::downcast_actor::<#self_ty>(this)?;
                #( let #args: #types = args.next()?; )*
                args.finish()?;
                ::filament::__private::encode(&this.#name(#(#args),*))
            }
            ::filament::__private::inventory::submit! {
                ::filament::__private::ActorMethod {
                    id: ::core::concat!(::core::module_path!(), "::", #class_name, "::", #method_name),
                    call: #call,
                }
            }
        });
    }

    let doc = format!(
        "Creates a [`{class_name}`] actor in a worker process of its own with `{class_name}::new(…)`."
    );
    Ok(quote! {
        #item

        impl #self_ty {
            #[doc = #doc]
            #ctor_vis fn remote(#(#ctor_args: impl ::filament::IntoArg<#ctor_types>),*) -> #handle {
                #handle {
                    inner: ::filament::__private::create_actor(
                        ::core::concat!(::core::module_path!(), "::", #class_name),
                        #class_name,
                        ::std::vec![#(::filament::IntoArg::into_arg(#ctor_args)),*],
                        #max_restarts,
                        #max_task_retries,
                    ),
                }
            }
        }

        impl #handle {
            #(#handle_methods)*
        }

        const _: () = {
            fn __filament_construct(
                mut args: ::filament::__private::Args<'_>,
            ) -> ::core::result::Result<
                ::std::boxed::Box<dyn ::core::any::Any + ::core::marker::Send>,
                ::filament::TaskError,
            > {
                #( let #ctor_args: #ctor_types = args.next()?; )*
                args.finish()?;
                ::core::result::Result::Ok(::std::boxed::Box::new(<#self_ty>::new(#(#ctor_args),*)))
            }
            ::filament::__private::inventory::submit! {
                ::filament::__private::ActorClass {
                    id: ::core::concat!(::core::module_path!(), "::", #class_name),
                    construct: __filament_construct,
                }
            }
            #(#registrations)*
        };
    })
}
