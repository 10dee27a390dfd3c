//! Who may hold a connection: limits in the spirit of OpenSSH's `MaxStartups` and
//! `PerSourceMaxStartups` for connections that have not authenticated yet, and a cap
//! on authenticated connections per user.
//!
//! Invariants: every admitted connection holds a [`Ticket`], and the counts it took are
//! given back when the ticket is dropped, however the connection ends. Nothing here
//! awaits: admission is decided at accept, before any byte is read.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::config::AdmissionLimits as Limits;
use crate::sync::lock;

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `max_startups`: too many unauthenticated connections (or the random drop).
    Startups,
    /// `per_source_max_startups`.
    PerSource,
    /// `max_connections_per_user`.
    PerUser,
}

#[derive(Debug, Default)]
struct Counts {
    unauthenticated: usize,
    by_source: HashMap<IpAddr, usize>,
    by_user: HashMap<String, usize>,
}

/// The admission state every connection shares.
#[derive(Debug)]
pub(crate) struct Admission {
    limits: Limits,
    counts: Arc<Mutex<Counts>>,
}

/// What a connection holds: its place among the unauthenticated (until it
/// authenticates) or its user's count (after).
#[derive(Debug)]
pub(crate) struct Ticket {
    counts: Arc<Mutex<Counts>>,
    source: IpAddr,
    /// Set once authenticated: whose count this ticket holds.
    user: Option<String>,
}

impl Admission {
    pub(crate) fn new(limits: Limits) -> Self {
        Admission {
            limits,
            counts: Arc::default(),
        }
    }

    /// Admits a new connection from `source`, or says why not.
    pub(crate) fn admit(&self, source: IpAddr) -> Result<Ticket, Refusal> {
        self.admit_with(source, rand::random::<u8>() % 100)
    }

    /// [`admit`](Self::admit) with the random draw (0..100) given.
    fn admit_with(&self, source: IpAddr, draw: u8) -> Result<Ticket, Refusal> {
        let mut counts = lock(&self.counts);
        let from_source = counts.by_source.get(&source).copied().unwrap_or(0);
        if self
            .limits
            .per_source_max_startups
            .is_some_and(|max| from_source >= max)
        {
            return Err(Refusal::PerSource);
        }
        let m = self.limits.max_startups;
        let n = counts.unauthenticated;
        if n >= m.full {
            return Err(Refusal::Startups);
        }
        if n >= m.start {
            // From RATE% at START to 100% at FULL, as OpenSSH does.
            let span = (m.full - m.start).max(1);
            let p = usize::from(m.rate) + (100 - usize::from(m.rate)) * (n - m.start) / span;
            if usize::from(draw) < p {
                return Err(Refusal::Startups);
            }
        }
        counts.unauthenticated += 1;
        *counts.by_source.entry(source).or_insert(0) += 1;
        Ok(Ticket {
            counts: Arc::clone(&self.counts),
            source,
            user: None,
        })
    }

    /// Moves `ticket` from the unauthenticated to `user`'s connections, or says why
    /// not (the user has too many).
    pub(crate) fn authenticated(&self, ticket: &mut Ticket, user: &str) -> Result<(), Refusal> {
        if ticket.user.is_some() {
            return Ok(());
        }
        let mut counts = lock(&self.counts);
        let of_user = counts.by_user.get(user).copied().unwrap_or(0);
        if self
            .limits
            .max_connections_per_user
            .is_some_and(|max| of_user >= max)
        {
            return Err(Refusal::PerUser);
        }
        release_startup(&mut counts, ticket.source);
        *counts.by_user.entry(user.to_string()).or_insert(0) += 1;
        ticket.user = Some(user.to_string());
        Ok(())
    }

    /// Unauthenticated connections now.
    #[cfg(test)]
    fn unauthenticated(&self) -> usize {
        lock(&self.counts).unauthenticated
    }
}

fn release_startup(counts: &mut Counts, source: IpAddr) {
    counts.unauthenticated = counts.unauthenticated.saturating_sub(1);
    if let Some(n) = counts.by_source.get_mut(&source) {
        *n -= 1;
        if *n == 0 {
            counts.by_source.remove(&source);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        match self.user.take() {
            None => release_startup(&mut counts, self.source),
            Some(user) => {
                if let Some(n) = counts.by_user.get_mut(&user) {
                    *n -= 1;
                    if *n == 0 {
                        counts.by_user.remove(&user);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_source_is_capped_before_it_can_crowd_out_the_others() {
        let a = Admission::new(Limits::default());
        let flood: Vec<Ticket> = (0..8).map(|_| a.admit(ip("127.0.0.2")).unwrap()).collect();
        assert_eq!(a.admit(ip("127.0.0.2")).unwrap_err(), Refusal::PerSource);
        // Another address is still taken every time: 8 is below MaxStartups' start.
        for _ in 0..50 {
            drop(a.admit(ip("127.0.0.1")).unwrap());
        }
        drop(flood);
        assert_eq!(a.unauthenticated(), 0);
        assert!(a.admit(ip("127.0.0.2")).is_ok());
    }

    #[test]
    fn past_start_connections_are_dropped_at_random_and_all_at_full() {
        let a = Admission::new(Limits {
            max_startups: "2:50:4".parse().unwrap(),
            per_source_max_startups: None,
            max_connections_per_user: None,
        });
        let source = ip("10.0.0.1");
        let mut held = vec![
            a.admit_with(source, 0).unwrap(),
            a.admit_with(source, 0).unwrap(),
        ];
        // At start (2): 50% are dropped: a draw below 50 is refused, above is taken.
        assert_eq!(a.admit_with(source, 49).unwrap_err(), Refusal::Startups);
        held.push(a.admit_with(source, 50).unwrap());
        // Halfway to full: 75%.
        assert_eq!(a.admit_with(source, 74).unwrap_err(), Refusal::Startups);
        held.push(a.admit_with(source, 75).unwrap());
        // At full: all.
        assert_eq!(a.admit_with(source, 99).unwrap_err(), Refusal::Startups);
        held.clear();
        assert!(a.admit_with(source, 0).is_ok());
    }

    #[test]
    fn authenticated_connections_leave_the_startups_and_count_per_user() {
        let a = Admission::new(Limits {
            max_startups: "2".parse().unwrap(),
            per_source_max_startups: None,
            max_connections_per_user: Some(2),
        });
        let source = ip("10.0.0.1");
        let mut t1 = a.admit(source).unwrap();
        let mut t2 = a.admit(source).unwrap();
        assert!(a.admit(source).is_err(), "two unauthenticated is the limit");
        a.authenticated(&mut t1, "jdoe@example.com").unwrap();
        a.authenticated(&mut t2, "jdoe@example.com").unwrap();
        assert_eq!(a.unauthenticated(), 0);
        let mut t3 = a.admit(source).unwrap();
        assert_eq!(
            a.authenticated(&mut t3, "jdoe@example.com").unwrap_err(),
            Refusal::PerUser
        );
        a.authenticated(&mut t3, "other@example.com").unwrap();
        drop(t1);
        let mut t4 = a.admit(source).unwrap();
        a.authenticated(&mut t4, "jdoe@example.com").unwrap();
    }
}
