//! `mysimbdp-sandbox`: the fork server of the sandbox every tenant's program runs in. The platform
//! starts it once (with its socket as descriptor 3); it clones each run's init into the run's new
//! namespaces. It is not a command for people. See `mysimbdp::runtime::sandbox::forkserver`.

fn main() {
    mysimbdp::runtime::sandbox::forkserver::main()
}
