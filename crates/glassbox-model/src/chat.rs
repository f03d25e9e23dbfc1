//! Chat templates: the checkpoint's own Jinja template, rendered with minijinja.

use crate::error::{ModelError, Result};
use crate::tokenizer::TextTokenizer;
use minijinja::{context, Environment, Error, ErrorKind};

/// Renders a single user turn with the model's chat template and the generation prompt.
pub fn render_user_prompt(tok: &TextTokenizer, user: &str) -> Result<String> {
    render_chat(tok, &[("user", user)])
}

/// Renders a conversation — `(role, content)` turns such as `system`, `user`,
/// `assistant` — with the model's chat template and the generation prompt. A template
/// that refuses the turns (roles out of order, a role it does not know) is a
/// [`ModelError::Tokenizer`] carrying the template's own message.
pub fn render_chat(tok: &TextTokenizer, turns: &[(&str, &str)]) -> Result<String> {
    let template = tok.chat_template.as_deref().ok_or_else(|| {
        ModelError::Tokenizer("this model ships no chat template; run without --chat".into())
    })?;
    let mut env = Environment::new();
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        },
    );
    env.add_template("chat", template)
        .map_err(|e| ModelError::Tokenizer(format!("cannot parse the chat template: {e}")))?;
    let token = |id: Option<u32>| id.map(|i| tok.token_text(i)).unwrap_or_default();
    env.get_template("chat")
        .and_then(|t| {
            t.render(context! {
                messages => turns
                    .iter()
                    .map(|(role, content)| context! { role => role, content => content })
                    .collect::<Vec<_>>(),
                add_generation_prompt => true,
                bos_token => token(tok.bos_token_id),
                eos_token => token(tok.eos_token_id),
            })
        })
        .map_err(|e| ModelError::Tokenizer(format!("cannot render the chat template: {e}")))
}
