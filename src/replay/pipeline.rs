//! Statements sent together and answered in order: one round trip for many statements.

use std::pin::Pin;
use std::task::Poll;

/// A statement in flight: rows affected, or the target's refusal.
pub type Answer<'a> = Pin<Box<dyn Future<Output = Result<u64, tokio_postgres::Error>> + 'a>>;

/// Runs `futures` together, polling each for the first time in order: a tokio-postgres request is sent at
/// its first poll, so the target receives, executes and answers them in this order.
pub async fn in_order<'a, T>(mut futures: Vec<Pin<Box<dyn Future<Output = T> + 'a>>>) -> Vec<T> {
    let mut answers: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, answer) in futures.iter_mut().zip(answers.iter_mut()) {
            if answer.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(v) => *answer = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    answers
        .into_iter()
        .map(|a| a.expect("every future finished"))
        .collect()
}
