//! What the test tools and the end-to-end tests share.

/// Tortoise reading number `n` as the JSON message the `tortoise-stream` app reads (~200 bytes; seed
/// 002's fields); `n` makes each one different.
pub fn tortoise_reading(n: u64) -> String {
    format!(
        "{{\"time\":{},\"acceleration\":1.0{},\"acceleration_x\":{},\"acceleration_y\":-12,\"acceleration_z\":1003,\"battery\":{},\"humidity\":{}.5,\"pressure\":1012.3,\"temperature\":21.25,\"dev-id\":\"tortoise-{:04}\"}}",
        1_700_000_000_000u64 + n,
        n % 10,
        n % 97,
        2900 + n % 50,
        20 + n % 60,
        n % 1000
    )
}
