//! The forward pass shared by every architecture: a batch of (token, position, sequence) goes
//! through the layers as matrices — one weight-matrix × many-token product per projection —
//! each layer running the parts its [`crate::parts::Layer`] names.
//!
//! x = embed(tokens) (· embd_scale)
//! for each layer:
//!     h = norm(x) ; q, k, v = h·Wq (+bq), h·Wk (+bk), h·Wv (+bv)
//!         (an RMSNorm is fused into the encoding of the activations where it can be)
//!     q, k = rope(qk_norm(q), qk_norm(k))   (the layer's own rope table)
//!     cache[seq][pos] = (k, v) ; x += post_norm(attend(q, cache) · Wo)   (window, soft-cap)
//!     h = norm(x) ; x += post_norm((act(h·Wgate) * h·Wup) · Wdown)   (FFN_CHUNK rows at a time)
//! logits = softcap(norm(x[wanted rows]) · Wout)

use torchless_kernels::ops::{
    geglu, geglu_ggml, layer_norm, rms_norm, rms_scale, rope_cache_freqs, rope_heads, softcap,
    swiglu,
};
use torchless_kernels::tile::SharedOut;
use torchless_kernels::{matmul, matmul_f32, matmul_many, Activations, GgmlType, Numerics, Tensor};

use crate::attention::{attend, AttnShape};
use crate::batch::Batch;
use crate::error::ModelError;
use crate::flash_attention::attend_flash;
use crate::kv_cache::KvCache;
use crate::model::{Dump, Model, Precision};
use crate::parts::{Activation, NormKind};
use crate::weights::{FfnWeights, MixerWeights, Norm};
use crate::workspace::{Workspace, FFN_CHUNK};

/// `dump!(self, "name-{l}", data, rows)`: reports a tensor when the model was loaded with
/// [`Dump`] on; formats the name only then, so the forward pass allocates nothing otherwise.
macro_rules! dump {
    ($model:expr, $($fmt:literal)+, $data:expr, $rows:expr) => {
        if $model.dump != Dump::Off {
            dump_tensor(&$model.dump, &format!($($fmt)+), $data, $rows);
        }
    };
}

fn dump_tensor(dump: &Dump, name: &str, data: &[f32], rows: usize) {
    if rows == 0 {
        return;
    }
    if let Dump::PrintAndSave(dir) = dump {
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        let _ = std::fs::write(dir.join(format!("{name}.bin")), bytes);
    }
    let w = data.len() / rows;
    eprintln!("{name} = [{w}, {rows}]");
    for r in data.chunks_exact(w.max(1)) {
        let e = |i: usize| r.get(i).copied().unwrap_or(0.0);
        eprintln!(
            "    [{:10.4} {:10.4} {:10.4} ... {:10.4} {:10.4} {:10.4}]",
            e(0),
            e(1),
            e(2),
            e(w - 3),
            e(w - 2),
            e(w - 1)
        );
    }
    eprintln!(
        "    sum = {:.6}",
        data.iter().map(|&v| v as f64).sum::<f64>()
    );
}

impl Model {
    /// Calls `f(t)` for every token `t` of a batch of `n`, tokens spread over the pool in
    /// chunks (a single token runs on the caller, with no hand-off).
    fn per_token(&self, n: usize, f: impl Fn(usize) + Sync) {
        let grain = n.div_ceil(4 * self.pool.n_threads()).max(4);
        self.pool
            .parallel_for(n, grain, |_, tokens| tokens.for_each(&f));
    }

    /// `x += y`, rows of `d` values, spread over the pool.
    fn residual(&self, x: &mut [f32], y: &[f32], d: usize) {
        let xs = SharedOut::new(x);
        self.per_token(y.len() / d, |t| {
            // SAFETY: row `t` of `x` is touched by this call only.
            let row = unsafe { xs.slice_mut(t * d, d) };
            torchless_kernels::ops::add_assign(row, &y[t * d..(t + 1) * d]);
        });
    }

    /// The one activation format every output takes, in the reference precision (then the
    /// input is encoded once and the products run as one job); None otherwise.
    fn shared_format(&self, outputs: &[(&Tensor, &mut [f32])]) -> Option<GgmlType> {
        let fmt = |w: &Tensor| w.ty().traits().vec_dot_type;
        let need = fmt(outputs.first()?.0);
        let shared = outputs.iter().all(|(w, _)| fmt(w) == need);
        (self.precision == Precision::Reference && shared).then_some(need)
    }

    /// `out[t] = input[t] · Wᵀ` for each (W, out) pair, all from the same `input` rows; in the
    /// reference precision the input is encoded once per activation format.
    fn project(
        &self,
        nm: Numerics,
        acts: &mut Activations,
        input: &[f32],
        n: usize,
        outputs: &mut [(&Tensor, &mut [f32])],
    ) -> Result<(), ModelError> {
        if let (Some(need), Some((first, _))) = (self.shared_format(outputs), outputs.first()) {
            acts.encode(&self.pool, &self.kernels, need, input, n, first.cols())?;
            matmul_many(&self.pool, &self.kernels, nm, acts, outputs)?;
            return Ok(());
        }
        let mut encoded: Option<GgmlType> = None;
        for (w, out) in outputs.iter_mut() {
            match self.precision {
                Precision::F32 => matmul_f32(&self.pool, w, input, n, out)?,
                Precision::Reference => {
                    let need = w.ty().traits().vec_dot_type;
                    if encoded != Some(need) {
                        acts.encode(&self.pool, &self.kernels, need, input, n, w.cols())?;
                        encoded = Some(need);
                    }
                    matmul(&self.pool, &self.kernels, nm, w, acts, out)?;
                }
            }
        }
        Ok(())
    }

    /// [`Model::project`] of `norm(x)` (`input` = `(x, norm)`): in the reference precision,
    /// when the norm is an RMSNorm and every output takes the same activation format, the norm
    /// is fused into the encoding (the normalized rows are never written); otherwise (and
    /// always when dumping, so that the caller can dump `xn`) they go through `xn`.
    fn project_normed(
        &self,
        nm: Numerics,
        acts: &mut Activations,
        input: (&[f32], &Norm),
        xn: &mut [f32],
        n: usize,
        outputs: &mut [(&Tensor, &mut [f32])],
    ) -> Result<(), ModelError> {
        let (x, norm) = input;
        let (d, eps) = (self.config.n_embd, self.config.norm_eps);
        let rms = self.config.plan.norm != NormKind::Layer;
        if let Some(need) = self
            .shared_format(outputs)
            .filter(|_| self.dump == Dump::Off && rms)
        {
            acts.encode_rms_norm(&self.pool, &self.kernels, need, x, &norm.w, eps, n, d)?;
            matmul_many(&self.pool, &self.kernels, nm, acts, outputs)?;
            return Ok(());
        }
        self.norm_rows(norm, &x[..n * d], &mut xn[..n * d]);
        self.project(nm, acts, &xn[..n * d], n, outputs)
    }

    /// `out[t] = norm(x[t])` for rows of `n_embd`, with the model's kind of norm.
    fn norm_rows(&self, norm: &Norm, x: &[f32], out: &mut [f32]) {
        let (d, eps) = (self.config.n_embd, self.config.norm_eps);
        for (row, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            match self.config.plan.norm {
                NormKind::Layer => layer_norm(row, &norm.w, norm.b.as_deref(), eps, o),
                NormKind::Rms | NormKind::RmsOnePlus => rms_norm(row, &norm.w, eps, o),
            }
        }
    }

    /// `x[t] = norm(x[t])` through `tmp` (a post-norm on a part's output).
    fn norm_in_place(&self, norm: &Norm, x: &mut [f32], tmp: &mut [f32]) {
        let tmp = &mut tmp[..x.len()];
        tmp.copy_from_slice(x);
        self.norm_rows(norm, tmp, x);
    }

    /// Checks a batch against the model, the workspace and the cache, and reserves its
    /// positions.
    fn prepare(
        &self,
        batch: &Batch,
        cache: &mut KvCache,
        ws: &Workspace,
    ) -> Result<(), ModelError> {
        let n = batch.len();
        if ws.threads < self.pool.n_threads() {
            return Err(ModelError::Invalid(format!(
                "the workspace was made for {} threads but the model runs {}: build it with \
                 Workspace::new(.., model.threads())",
                ws.threads,
                self.pool.n_threads()
            )));
        }
        if n > ws.max_batch {
            return Err(ModelError::BatchTooLarge {
                n,
                max: ws.max_batch,
            });
        }
        let lens_ok = batch.pos.len() == n && batch.seq.len() == n && batch.logits.len() == n;
        if !lens_ok {
            return Err(ModelError::Invalid(
                "batch fields have different lengths".into(),
            ));
        }
        for i in 0..n {
            let tok = batch.tokens[i];
            if tok as usize >= self.config.vocab {
                return Err(ModelError::InvalidToken {
                    id: tok,
                    vocab: self.config.vocab,
                });
            }
            let (seq, pos) = (batch.seq[i], batch.pos[i]);
            if pos + 1 > ws.max_ctx {
                return Err(ModelError::ContextFull {
                    need: pos + 1,
                    max: ws.max_ctx,
                });
            }
            // Each sequence's positions continue where it stands, in order and without gaps
            // (a gap would attend to whatever a block held before).
            let expected = match (0..i).rev().find(|&j| batch.seq[j] == seq) {
                Some(j) => batch.pos[j] + 1,
                None => cache.seq_len(seq),
            };
            if pos != expected {
                return Err(ModelError::Invalid(format!(
                    "batch entry {i} puts sequence {seq} at position {pos}, but it continues \
                     at {expected}"
                )));
            }
        }
        // Room for every sequence's last position, all or nothing.
        let last_of = |i: usize| !batch.seq[i + 1..].contains(&batch.seq[i]);
        let wants = (0..n)
            .filter(|&i| last_of(i))
            .map(|i| (batch.seq[i], batch.pos[i] + 1));
        if let Some((_, len)) = wants.clone().find(|w| w.1 > cache.capacity()) {
            return Err(ModelError::ContextFull {
                need: len,
                max: cache.capacity(),
            });
        }
        cache.check_room(wants)?;
        for i in (0..n).filter(|&i| last_of(i)) {
            cache.reserve(batch.seq[i], batch.pos[i] + 1)?;
        }
        Ok(())
    }

    /// Runs `batch` through the model, storing its keys and values in `cache`. The logits of
    /// the entries marked in `batch.logits` are left in `ws.logits()`, one row each, in order.
    pub fn forward(
        &self,
        batch: &Batch,
        cache: &mut KvCache,
        ws: &mut Workspace,
    ) -> Result<(), ModelError> {
        self.prepare(batch, cache, ws)?;
        let c = &self.config;
        let plan = &c.plan;
        let n = batch.len();
        let nm = batch.numerics;
        let (d, ff) = (c.n_embd, c.n_ff);
        let Workspace {
            x,
            xn,
            q,
            k,
            v,
            att,
            proj,
            gate,
            up,
            rope,
            rope_freqs,
            scores,
            flash_tile,
            acts,
            out_rows,
            out_hidden,
            logits,
            max_ctx,
            max_batch,
            n_outputs,
            head_window,
            ..
        } = ws;

        for (t, &tok) in batch.tokens.iter().enumerate() {
            let row = &mut x[t * d..(t + 1) * d];
            if !self.weights.token_embd.row_to_f32(tok as usize, row) {
                return Err(ModelError::InvalidToken {
                    id: tok,
                    vocab: c.vocab,
                });
            }
            if let Some(s) = plan.embd_scale {
                row.iter_mut().for_each(|v| *v *= s);
            }
        }
        // One table of cos/sin per token for each distinct rotary embedding.
        let table_len = *max_batch * plan.max_rope_dims();
        for (r, (spec, freqs)) in plan.ropes.iter().zip(rope_freqs.iter()).enumerate() {
            let rd = spec.dims;
            let tables = &mut rope[r * table_len..(r + 1) * table_len];
            for t in 0..n {
                let table = &mut tables[t * rd..(t + 1) * rd];
                rope_cache_freqs(batch.pos[t] as f32, rd, freqs, table);
            }
        }
        dump!(self, "embd", &x[..n * d], n);
        out_rows.clear();
        out_rows.extend((0..n).filter(|&t| batch.logits[t]));
        let n_out = out_rows.len();
        *n_outputs = n_out;
        let skipped = |l: usize| batch.skip_layers.get(l).copied().unwrap_or(false);
        let n_layers = self.weights.layers.len();
        let last = (0..n_layers).rev().find(|&l| !skipped(l)).unwrap_or(0);
        let mut pruned = false;

        for (l, (w, spec)) in self.weights.layers.iter().zip(&plan.layers).enumerate() {
            if skipped(l) {
                continue;
            }
            let a = spec.attention();
            let MixerWeights::Attention(aw) = &w.mixer;
            let (qd, kvd, hd) = (a.q_dim(), a.kv_dim(), a.head_dim);
            self.project_normed(
                nm,
                acts,
                (&x[..n * d], &w.attn_norm),
                &mut xn[..n * d],
                n,
                &mut [
                    (&aw.wq, &mut q[..n * qd]),
                    (&aw.wk, &mut k[..n * kvd]),
                    (&aw.wv, &mut v[..n * kvd]),
                ],
            )?;
            dump!(self, "attn_norm-{l}", &xn[..n * d], n);
            dump!(self, "Qcur-{l}", &q[..n * qd], n);
            dump!(self, "Kcur-{l}", &k[..n * kvd], n);
            dump!(self, "Vcur-{l}", &v[..n * kvd], n);
            {
                let (qs, ks, vs) = (SharedOut::new(q), SharedOut::new(k), SharedOut::new(v));
                let (bq, bk, bv) = (aw.bq.as_deref(), aw.bk.as_deref(), aw.bv.as_deref());
                let (qn, kn) = (aw.q_norm.as_deref(), aw.k_norm.as_deref());
                let rope_of = a.rope.map(|r| (&plan.ropes[r], &rope[r * table_len..]));
                let (eps, q_scale) = (c.norm_eps, a.q_scale);
                self.per_token(n, |t| {
                    // SAFETY: token `t`'s rows of q, k and v are touched by this call only.
                    let (qt, kt, vt) = unsafe {
                        (
                            qs.slice_mut(t * qd, qd),
                            ks.slice_mut(t * kvd, kvd),
                            vs.slice_mut(t * kvd, kvd),
                        )
                    };
                    for (bias, row) in [(bq, &mut *qt), (bk, &mut *kt), (bv, vt)] {
                        if let Some(b) = bias {
                            torchless_kernels::ops::add_assign(row, b);
                        }
                    }
                    for (norm, row) in [(qn, &mut *qt), (kn, &mut *kt)] {
                        if let Some(wn) = norm {
                            head_norm(row, wn, eps);
                        }
                    }
                    if let Some((r, tables)) = rope_of {
                        let table = &tables[t * r.dims..(t + 1) * r.dims];
                        rope_heads(&self.kernels, qt, hd, r.dims, r.style, table);
                        rope_heads(&self.kernels, kt, hd, r.dims, r.style, table);
                    }
                    if let Some(s) = q_scale {
                        qt.iter_mut().for_each(|v| *v *= s);
                    }
                });
            }
            for t in 0..n {
                cache.write(
                    l,
                    batch.seq[t],
                    batch.pos[t],
                    &k[t * kvd..(t + 1) * kvd],
                    &v[t * kvd..(t + 1) * kvd],
                )?;
            }
            dump!(self, "Qrope-{l}", &q[..n * qd], n);
            dump!(self, "Krope-{l}", &k[..n * kvd], n);
            let shape = AttnShape {
                layer: l,
                n_head: a.n_head,
                n_head_kv: a.n_head_kv,
                head_dim: hd,
                scale: a.scale,
                window: a.window,
                softcap: a.softcap,
            };
            match *flash_tile {
                Some(tile) => attend_flash(
                    &self.kernels,
                    &self.pool,
                    &shape,
                    batch,
                    cache,
                    &q[..n * qd],
                    &mut att[..n * qd],
                    scores,
                    *max_ctx,
                    tile,
                )?,
                None => attend(
                    nm,
                    &self.kernels,
                    &self.pool,
                    &shape,
                    batch,
                    cache,
                    &q[..n * qd],
                    &mut att[..n * qd],
                    scores,
                    *max_ctx,
                )?,
            }
            dump!(self, "kqv_out-{l}", &att[..n * qd], n);
            self.project(
                nm,
                acts,
                &att[..n * qd],
                n,
                &mut [(&aw.wo, &mut proj[..n * d])],
            )?;
            dump!(self, "attn_out-{l}", &proj[..n * d], n);
            // After the last layer's attention only the rows whose logits are wanted matter
            // (as in llama.cpp, which drops the others at this point): keep those, in order.
            let m = if l == last && n_out < n {
                for (i, &t) in out_rows.iter().enumerate() {
                    x.copy_within(t * d..(t + 1) * d, i * d);
                    proj.copy_within(t * d..(t + 1) * d, i * d);
                }
                pruned = true;
                n_out
            } else {
                n
            };
            if m == 0 {
                break;
            }
            if let Some(norm) = &w.post_mixer_norm {
                self.norm_in_place(norm, &mut proj[..m * d], xn);
                dump!(self, "attn_post_norm-{l}", &proj[..m * d], m);
            }
            self.residual(&mut x[..m * d], &proj[..m * d], d);
            dump!(self, "ffn_inp-{l}", &x[..m * d], m);

            let FfnWeights::Gated {
                w_gate,
                w_up,
                w_down,
            } = &w.ffn;
            let act = match spec.ffn {
                crate::parts::FeedForward::Gated { act, .. } => act,
            };
            // The feed-forward block runs over at most `FFN_CHUNK` rows at a time: its
            // intermediate rows (n_ff wide) are the largest buffers of a forward pass.
            let mut c0 = 0;
            while c0 < m {
                // No chunk of one row out of a batch: in llama.cpp's numerics a lone row would
                // take the single-token kernels, whose reduction order differs from the batched
                // one (batch-invariant numerics give every row one order anyway).
                let mut end = (c0 + FFN_CHUNK).min(m);
                if m - end == 1 {
                    end -= 1;
                }
                let rows = c0..end;
                c0 = end;
                let k = rows.len();
                let xs = &mut x[rows.start * d..rows.end * d];
                self.project_normed(
                    nm,
                    acts,
                    (xs, &w.ffn_norm),
                    &mut xn[..k * d],
                    k,
                    &mut [(w_gate, &mut gate[..k * ff]), (w_up, &mut up[..k * ff])],
                )?;
                dump!(self, "ffn_gate-{l}", &gate[..k * ff], k);
                dump!(self, "ffn_up-{l}", &up[..k * ff], k);
                {
                    let gs = SharedOut::new(&mut gate[..k * ff]);
                    let reference = self.precision == Precision::Reference;
                    let up = &up[..k * ff];
                    self.per_token(k, |t| {
                        // SAFETY: token `t`'s row of `gate` is touched by this call only.
                        let g = unsafe { gs.slice_mut(t * ff, ff) };
                        let u = &up[t * ff..(t + 1) * ff];
                        match act {
                            Activation::Silu => swiglu(&self.kernels, g, u),
                            Activation::GeluTanh if reference => geglu_ggml(g, u),
                            Activation::GeluTanh => geglu(g, u),
                        }
                    });
                }
                let out = &mut proj[rows.start * d..rows.end * d];
                self.project(nm, acts, &gate[..k * ff], k, &mut [(w_down, &mut *out)])?;
                if let Some(norm) = &w.post_ffn_norm {
                    self.norm_in_place(norm, out, xn);
                }
                dump!(self, "ffn_out-{l}", &proj[rows.start * d..rows.end * d], k);
                self.residual(xs, &proj[rows.start * d..rows.end * d], d);
            }
            dump!(self, "l_out-{l}", &x[..m * d], m);
        }

        if n_out == 0 {
            return Ok(());
        }
        if out_hidden.len() < n_out * d {
            out_hidden.resize(n_out * d, 0.0);
        }
        for (i, &t) in out_rows.iter().enumerate() {
            // The last layer may have left the wanted rows first, in order.
            let r = if pruned { i } else { t };
            self.norm_rows(
                &self.weights.output_norm,
                &x[r * d..(r + 1) * d],
                &mut out_hidden[i * d..(i + 1) * d],
            );
        }
        if logits.len() < n_out * c.vocab {
            logits.resize(n_out * c.vocab, 0.0);
        }
        // A vocabulary window computes the first rows of the head only (a draft's cheaper
        // head); the ids past it get -inf, a probability of zero.
        let (head, cols) = match head_window {
            Some(h) => (&*h, h.rows().min(c.vocab)),
            None => (&self.weights.output, c.vocab),
        };
        self.project(
            nm,
            acts,
            &out_hidden[..n_out * d],
            n_out,
            &mut [(head, &mut logits[..n_out * cols])],
        )?;
        if let Some(cap) = plan.final_softcap {
            softcap(&mut logits[..n_out * cols], cap);
        }
        if cols < c.vocab {
            spread_rows(&mut logits[..n_out * c.vocab], cols, c.vocab);
        }
        dump!(self, "result_output", &logits[..n_out * c.vocab], n_out);
        Ok(())
    }
}

/// Moves the rows of `cols` values packed at the front of `buf` to rows of `stride` values,
/// filling the rest of each row with -inf (last row first, so that nothing is overwritten
/// before it moves).
fn spread_rows(buf: &mut [f32], cols: usize, stride: usize) {
    let n = buf.len() / stride;
    for i in (0..n).rev() {
        buf.copy_within(i * cols..(i + 1) * cols, i * stride);
        buf[i * stride + cols..(i + 1) * stride].fill(f32::NEG_INFINITY);
    }
}

/// RMSNorm of every head of `row` (heads as wide as `w`), in place.
fn head_norm(row: &mut [f32], w: &[f32], eps: f32) {
    for head in row.chunks_exact_mut(w.len().max(1)) {
        let s = rms_scale(head, eps);
        for (v, &g) in head.iter_mut().zip(w) {
            *v = (*v * s) * g;
        }
    }
}
