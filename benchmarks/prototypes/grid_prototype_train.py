import numpy as np, xarray as xr, glob, sys, time, math, torch, torch.nn as nn, torch.nn.functional as F, argparse
ap=argparse.ArgumentParser()
ap.add_argument("--var",default="t2m"); ap.add_argument("--steps",type=int,default=1500)
ap.add_argument("--enc-steps",type=int,default=400); ap.add_argument("--hidden",type=int,default=24)
ap.add_argument("--factors",type=int,nargs="+",default=[2,4,8,16,32,64])
ap.add_argument("--lams",type=float,nargs="+",default=[0.1,0.3,1,3,10,30])
ap.add_argument("--pos",type=int,default=0); ap.add_argument("--threads",type=int,default=2)
ap.add_argument("--batch",type=int,default=6); ap.add_argument("--up",default="bilinear"); ap.add_argument("--ctx",default="none"); ap.add_argument("--save",default=""); ap.add_argument("--conv",type=int,default=0)
a=ap.parse_args()
torch.set_num_threads(a.threads); torch.manual_seed(0)
files=sorted(glob.glob("data/era5-1deg/*.nc"))
arr=np.concatenate([xr.open_dataset(f)[a.var].values for f in files]).astype(np.float32)
tr,te=arr[:17],arr[17:]
mean=tr.astype(np.float64).mean(0); s=float((tr-mean).std())
H,W=mean.shape; rng=te.max()-te.min()
def psnr(x,y): return 20*np.log10(rng/np.sqrt(np.mean((x.astype(np.float64)-y)**2)))
Xtr=torch.tensor((tr-mean)/s,dtype=torch.float32); Xte=torch.tensor((te-mean)/s,dtype=torch.float32)
meanN=torch.tensor((mean-mean.mean())/mean.std(),dtype=torch.float32)[None,None]
shapes=[(math.ceil(H/f),math.ceil(W/f)) for f in a.factors]
L=len(shapes)
class Dec(nn.Module):
    def __init__(s_):
        super().__init__()
        nin=L+1+a.pos
        s_.pos=nn.Parameter(torch.zeros(1,a.pos,math.ceil(H/4),math.ceil(W/4))) if a.pos else None
        s_.gain=nn.Parameter(torch.full((L,),0.1))
        h=a.hidden
        s_.mlp=nn.Sequential(nn.Conv2d(nin,h,1),nn.GELU(),nn.Conv2d(h,h,1),nn.GELU(),nn.Conv2d(h,1,1))
        s_.conv=nn.Conv2d(1,1,3,padding=1) if a.conv else None
        s_.logb=nn.Parameter(torch.zeros(L,8,5))
    def forward(s_,zs):
        B=zs[0].shape[0]
        ups=[F.interpolate(z[:,None],size=(H,W),mode=a.up,align_corners=False) for z in zs]
        feats=torch.cat(ups,1)*s_.gain[None,:,None,None]
        parts=[feats,meanN.expand(B,-1,-1,-1)]
        if s_.pos is not None: parts.append(F.interpolate(s_.pos,size=(H,W),mode="bilinear",align_corners=False).expand(B,-1,-1,-1))
        out=s_.mlp(torch.cat(parts,1))
        if s_.conv is not None: out=out+s_.conv(out)
        return out[:,0]
    def bits(s_,zs,zr=None):
        tot=0
        if zr is None: zr=[torch.round(z).detach() for z in zs]
        for l,z in enumerate(zs):
            cc,ss=ctx(zr,l); b=torch.exp(s_.logb[l][cc,ss])
            def cdf(v): return 0.5+0.5*torch.sign(v)*(1-torch.exp(-v.abs()/b))
            p=(cdf(z+0.5)-cdf(z-0.5)).clamp_min(1e-9)
            tot=tot-torch.log2(p).flatten(1).sum(1)
        return tot
CB=torch.tensor([0,1,2,3,3,4,4,4,5,5,5,5,6,6,6,6,6,6,7])
SB=torch.tensor([0,1,2,3,3,4])
def ctx(zr,l):
    z=zr[l]; B,h,w=z.shape
    if "coarse" in a.ctx or "both" in a.ctx:
        if l+1<len(zr):
            c=F.avg_pool2d(F.pad(zr[l+1].abs()[:,None],(1,1,1,1)),3,1)[:,0]*9
            c=c.repeat_interleave(2,1).repeat_interleave(2,2)[:,:h,:w]
            c=CB[c.round().long().clamp(0,18)]
        else: c=torch.zeros(B,h,w,dtype=torch.long)
    else: c=torch.zeros(B,h,w,dtype=torch.long)
    if "both" in a.ctx:
        u=F.pad(z.abs(),(1,1,1,0))[:,:h,:]  # row above
        sm=u[:,:,0:w]+u[:,:,1:w+1]+u[:,:,2:w+2]
        sm=SB[sm.round().long().clamp(0,5)]
    else: sm=torch.zeros(B,h,w,dtype=torch.long)
    return c,sm
dec=Dec()
def noisy(zs): return [z+torch.rand_like(z)-0.5 for z in zs]
def ste(zs): return [z+(torch.round(z)-z).detach() for z in zs]
# auto-decoder training
pairs=[(i,l) for i in range(17) for l in a.lams]
Z=[nn.Parameter(torch.zeros(len(pairs),*sh)) for sh in shapes]
opt=torch.optim.Adam([{"params":dec.parameters(),"lr":3e-3},{"params":Z,"lr":3e-2}])
sched=torch.optim.lr_scheduler.CosineAnnealingLR(opt,a.steps)
lamt=torch.tensor([p[1] for p in pairs]); idxt=torch.tensor([p[0] for p in pairs])
t0=time.time()
for step in range(a.steps):
    bi=torch.randint(0,len(pairs),(a.batch,))
    zs=[z[bi] for z in Z]
    zq=noisy(zs) if step<0.8*a.steps else ste(zs)
    rec=dec(zq); x=Xtr[idxt[bi]]
    mse=((rec-x)**2).mean((1,2)); bpv=dec.bits(noisy(zs))/(H*W)
    loss=(mse+lamt[bi]*bpv).mean()
    opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    if step%250==0 or step==a.steps-1:
        print(f"step {step} mse {mse.mean().item():.4f} bpv {bpv.mean().item():.4f} {time.time()-t0:.0f}s",flush=True)
for p in dec.parameters(): p.requires_grad_(False)
if a.save: torch.save({"dec":dec.state_dict(),"Z":[z.detach() for z in Z],"pairs":pairs},a.save)
print("logb",dec.logb.exp().tolist(),"gain",dec.gain.tolist())
def encode(x,lam,steps):
    zs=[torch.zeros(1,*sh,requires_grad=True) for sh in shapes]
    o=torch.optim.Adam(zs,lr=3e-2); sc=torch.optim.lr_scheduler.CosineAnnealingLR(o,steps)
    for k in range(steps):
        zq=noisy(zs) if k<0.7*steps else ste(zs)
        loss=((dec(zq)-x)**2).mean()+lam*dec.bits(noisy(zs)).sum()/(H*W)
        o.zero_grad(); loss.backward(); o.step(); sc.step()
    zq=[torch.round(z.detach()) for z in zs]
    return zq
# real rate estimate: per-level best laplace b from table, empty level=1 byte
def realbits(zq):
    tot=0
    for z in zq:
        v=z.flatten().numpy()
        if not v.any(): tot+=8; continue
        best=1e18
        for b in np.exp(np.linspace(-4,4,64)):
            c=lambda t: 0.5+0.5*np.sign(t)*(1-np.exp(-np.abs(t)/b))
            p=np.maximum(c(v+.5)-c(v-.5),1e-12); best=min(best,-np.log2(p).sum())
        tot+=best+8
    return tot
if a.save: sys.exit(0)
print("mean-only PSNR",np.mean([psnr(t,mean) for t in te]))
for lam in a.lams:
    t0=time.time(); ps=[];nb=0;recs=[]
    for i in range(7):
        zq=encode(Xte[i:i+1],lam,a.enc_steps)
        with torch.no_grad(): rec=dec(zq)[0].numpy()*s+mean
        ps.append(psnr(te[i],rec)); nb+=(dec.bits(zq,zq).item() if a.ctx!="none" else realbits(zq))/8+4; recs.append(rec)
    ratio=te.nbytes/nb
    print(f"lam {lam}: ratio {ratio:.1f} psnr {np.mean(ps):.2f} (per-field mean) overall {psnr(te,np.stack(recs)):.2f}  bpv {nb*8/te.size:.4f} enc {(time.time()-t0)/7:.1f}s/field",flush=True)
